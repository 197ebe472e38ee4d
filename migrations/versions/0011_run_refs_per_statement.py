"""signals and equity snapshots check their run once per statement, not once per row

``signals.run_id`` and ``equity_snapshots.run_id`` referred to ``runs`` through foreign keys.
PostgreSQL checks a foreign key with a trigger call per inserted row (a lookup in ``runs`` and
a row lock, through SPI). A backtest writes a signal per candle and symbol: in the eight-pair
benchmark 300,760 signal rows, whose checks cost the server 1.3 s of the 6.7 s of CPU it spent
on the run (``INSERT ... SELECT`` of the same rows into a copy of the table with and without
the key: 2.16 s against 0.82 s), on the core the bot's own threads also need.

The same rule is now checked once per statement, over the statement's rows (a transition
table), for both tables:
- an insert or update whose ``run_id`` is not in ``runs`` fails with ``foreign_key_violation``
  and names the run, and the transaction keeps nothing, as with the key;
- the runs referred to are locked ``FOR KEY SHARE`` first, as the key does, so a run cannot be
  deleted while rows that refer to it are being written;
- deleting a run, or changing its id, while signals or equity snapshots still refer to it
  fails the same way (the key's ``NO ACTION``).

Orders and fills keep their foreign keys: a few rows per trade, not per candle.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLES = ("signals", "equity_snapshots")


def upgrade() -> None:
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_run_id_fkey")
    op.execute("""
        CREATE FUNCTION run_refs_exist() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            ref text;
        BEGIN
            FOR ref IN SELECT DISTINCT run_id FROM new_rows LOOP
                PERFORM 1 FROM runs WHERE id = ref FOR KEY SHARE;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'insert or update on table "%" refers to run "%", which is not in runs',
                        TG_TABLE_NAME, ref USING ERRCODE = 'foreign_key_violation';
                END IF;
            END LOOP;
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE FUNCTION runs_still_referenced() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            gone text;
        BEGIN
            SELECT o.id INTO gone FROM old_rows o
             WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = o.id)
               AND (EXISTS (SELECT 1 FROM signals s WHERE s.run_id = o.id)
                    OR EXISTS (SELECT 1 FROM equity_snapshots e WHERE e.run_id = o.id))
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'run "%" is still referred to by signals or equity snapshots',
                    gone USING ERRCODE = 'foreign_key_violation';
            END IF;
            RETURN NULL;
        END $$
    """)
    for table in TABLES:
        for event in ("INSERT", "UPDATE"):
            op.execute(f"CREATE TRIGGER {table}_run_ref_{event.lower()} AFTER {event} ON {table} "
                       "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
                       "EXECUTE FUNCTION run_refs_exist()")
    for event in ("DELETE", "UPDATE"):
        op.execute(f"CREATE TRIGGER runs_referenced_{event.lower()} AFTER {event} ON runs "
                   "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
                   "EXECUTE FUNCTION runs_still_referenced()")


def downgrade() -> None:
    for event in ("delete", "update"):
        op.execute(f"DROP TRIGGER runs_referenced_{event} ON runs")
    for table in TABLES:
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER {table}_run_ref_{event} ON {table}")
    op.execute("DROP FUNCTION runs_still_referenced()")
    op.execute("DROP FUNCTION run_refs_exist()")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_run_id_fkey "
                   "FOREIGN KEY (run_id) REFERENCES runs(id)")
