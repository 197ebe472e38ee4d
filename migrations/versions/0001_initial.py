"""initial ledger: runs, accounts, signals, orders, fills, positions, equity, cursors, audit

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("symbols", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("config", pg.JSONB, nullable=False),
        sa.Column("summary", pg.JSONB),
    )
    op.create_index("ix_runs_account", "runs", ["account"])
    op.create_table(
        "accounts",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("quote", sa.String(16), nullable=False),
        sa.Column("starting_cash", sa.Numeric, nullable=False),
        sa.Column("cash", sa.Numeric, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "signals",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("p_up", sa.Float, nullable=False),
        sa.Column("expected_return", sa.Float, nullable=False),
        sa.Column("dispersion", sa.Float, nullable=False),
        sa.Column("regime", sa.Integer),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
    )
    op.create_index("ix_signals_account_symbol_ts", "signals", ["account", "symbol", "ts"])
    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.String(40), primary_key=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("order_type", sa.String(8), nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("limit_price", sa.Numeric),
        sa.Column("stop_price", sa.Numeric),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False),
        sa.Column("filled_qty", sa.Numeric, nullable=False),
        sa.Column("avg_fill_price", sa.Numeric, nullable=False),
        sa.Column("fees", sa.Numeric, nullable=False),
        sa.Column("exchange_order_id", sa.Text),
        sa.Column("reduce_only", sa.Boolean, nullable=False),
        sa.Column("signal_ts", TS, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_orders_account_status", "orders", ["account", "status"])
    op.create_table(
        "fills",
        sa.Column("fill_id", sa.String(64), primary_key=True),
        sa.Column("client_order_id", sa.String(40), sa.ForeignKey("orders.client_order_id"),
                  nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("fee", sa.Numeric, nullable=False),
        sa.Column("fee_currency", sa.String(16), nullable=False),
        sa.Column("liquidity", sa.String(8), nullable=False),
        sa.Column("ts", TS, nullable=False),
    )
    op.create_index("ix_fills_account", "fills", ["account"])
    op.create_table(
        "positions",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("quantity", sa.Numeric, nullable=False),
        sa.Column("avg_price", sa.Numeric, nullable=False),
        sa.Column("realized_pnl", sa.Numeric, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "equity_snapshots",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("cash", sa.Numeric, nullable=False),
        sa.Column("positions_value", sa.Numeric, nullable=False),
        sa.Column("equity", sa.Numeric, nullable=False),
    )
    op.create_index("ix_equity_account_ts", "equity_snapshots", ["account", "ts"])
    op.create_table(
        "cursors",
        sa.Column("account", sa.Text, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("last_ts", TS, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("recorded_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
    )
    op.create_index("ix_audit_account_id", "audit_events", ["account", "id"])
    op.create_index("ix_audit_entity", "audit_events", ["entity", "entity_id"])
    # The audit trail is append-only: refuse UPDATE, DELETE and TRUNCATE at the database.
    op.execute(
        """
        CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_update ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    for table in ("audit_events", "cursors", "equity_snapshots", "positions", "fills", "orders",
                  "signals", "accounts", "runs"):
        op.drop_table(table)
