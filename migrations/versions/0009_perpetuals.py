"""perpetual futures: funding cash flows and each position's liquidation price

- ``cash_flows``: cash that moves without a trade (a perpetual's funding), one row per
  account, symbol and funding time, signed as the account sees it, with the rate, mark and
  notional it was computed from. Append-only for the service's login, like fills.
- ``positions.liquidation_price``: where the venue would liquidate the position, on the mark
  price (``risk/margin.py``); NULL for spot.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""
from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROLE = "stackbot_app"


def upgrade() -> None:
    op.execute("""
        CREATE TABLE cash_flows (
            flow_id TEXT NOT NULL,
            account TEXT NOT NULL,
            symbol TEXT NOT NULL,
            kind TEXT NOT NULL,
            amount NUMERIC NOT NULL,
            rate NUMERIC NOT NULL,
            mark NUMERIC NOT NULL,
            notional NUMERIC NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (account, flow_id)
        )""")
    op.execute("CREATE INDEX ix_cash_flows_account_ts ON cash_flows (account, ts)")
    op.execute("ALTER TABLE positions ADD COLUMN liquidation_price NUMERIC")
    op.execute(f"GRANT SELECT, INSERT ON cash_flows TO {ROLE}")


def downgrade() -> None:
    op.execute("ALTER TABLE positions DROP COLUMN liquidation_price")
    op.execute("DROP TABLE cash_flows")
