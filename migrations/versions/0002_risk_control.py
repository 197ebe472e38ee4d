"""risk state, control requests (CLI kill switch) and MQTT commands

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "risk_states",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", pg.JSONB, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "control_requests",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("processed_at", TS),
        sa.Column("result", pg.JSONB),
    )
    op.create_index("ix_control_pending", "control_requests", ["account", "processed_at"])
    op.create_table(
        "commands",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("nonce", sa.Text, nullable=False, unique=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("ack", pg.JSONB, nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("commands")
    op.drop_index("ix_control_pending", "control_requests")
    op.drop_table("control_requests")
    op.drop_table("risk_states")
