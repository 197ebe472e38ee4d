"""each ensemble member's calibrated p beside the combined signal

The console shows, for every signal, what each member believed (``signals.members``: a JSON
object from member name to its calibrated P(target first)). NULL for sources that have no
members (the EMA baseline) and for signals recorded before this revision.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""
from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE signals ADD COLUMN members JSONB")


def downgrade() -> None:
    op.execute("ALTER TABLE signals DROP COLUMN members")
