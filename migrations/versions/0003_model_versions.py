"""model registry: model_versions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("ensemble_id", sa.Text, nullable=False),
        sa.Column("architecture", sa.Text, nullable=False),
        sa.Column("hyperparameters", pg.JSONB, nullable=False),
        sa.Column("feature_spec_hash", sa.String(32), nullable=False),
        sa.Column("symbols", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("train_start", TS, nullable=False),
        sa.Column("train_end", TS, nullable=False),
        sa.Column("metrics", pg.JSONB, nullable=False),
        sa.Column("checkpoint_path", sa.Text, nullable=False),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("promoted_at", TS),
        sa.CheckConstraint("status IN ('candidate', 'active', 'retired')",
                           name="ck_model_versions_status"),
    )
    op.create_index("ix_model_versions_ensemble", "model_versions", ["ensemble_id"])


def downgrade() -> None:
    op.drop_index("ix_model_versions_ensemble", "model_versions")
    op.drop_table("model_versions")
