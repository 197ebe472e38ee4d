"""the risk manager's memory: breaker windows, protective levels and the order throttle

Kept beside the trading state in ``risk_states`` and written with every unit of work, so a
restart rebuilds every breaker before the first decision instead of starting them empty. The
operator's kill/resume path (``bot/ledger/control_requests.py``) writes only the state columns and
leaves this one alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""
from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE risk_states ADD COLUMN breakers JSONB NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE risk_states DROP COLUMN breakers")
