"""hash-chained audit trail: seq, prev_hash, hash on audit_events, computed by the database

Every inserted audit row gets the next sequence number and the hash of the row before it,
under a row lock on ``audit_chain_head``, so concurrent writers form one chain. The row's own
hash is SHA-256 over a canonical text: seq, account, run_id, ts (ms), kind, entity,
entity_id, payload (jsonb's canonical text) and prev_hash. Existing rows are chained in id
order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
CANONICAL = ("concat_ws('|', NEW.seq::text, NEW.account, NEW.run_id, "
             "(floor(extract(epoch from NEW.ts) * 1000))::bigint::text, NEW.kind, NEW.entity, "
             "NEW.entity_id, NEW.payload::text, NEW.prev_hash)")


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("seq", sa.BigInteger))
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64)))
    op.add_column("audit_events", sa.Column("hash", sa.String(64)))
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),
    )
    op.execute(f"INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, '{GENESIS}')")
    op.execute(f"""
        CREATE FUNCTION audit_events_chain() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            head_seq bigint;
            head_hash text;
        BEGIN
            SELECT seq, hash INTO head_seq, head_hash FROM audit_chain_head WHERE id = 1
                FOR UPDATE;
            NEW.seq := head_seq + 1;
            NEW.prev_hash := head_hash;
            NEW.hash := encode(sha256(convert_to({CANONICAL}, 'UTF8')), 'hex');
            UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
            RETURN NEW;
        END $$;
    """)
    # chain what is already there, in id order (the append-only trigger steps aside once)
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
    op.execute(f"""
        DO $$
        DECLARE
            r record;
            prev text := '{GENESIS}';
            n bigint := 0;
            h text;
        BEGIN
            FOR r IN SELECT * FROM audit_events ORDER BY id LOOP
                n := n + 1;
                h := encode(sha256(convert_to(concat_ws('|', n::text, r.account, r.run_id,
                    (floor(extract(epoch from r.ts) * 1000))::bigint::text, r.kind, r.entity,
                    r.entity_id, r.payload::text, prev), 'UTF8')), 'hex');
                UPDATE audit_events SET seq = n, prev_hash = prev, hash = h WHERE id = r.id;
                prev := h;
            END LOOP;
            UPDATE audit_chain_head SET seq = n, hash = prev WHERE id = 1;
        END $$;
    """)
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update")
    op.alter_column("audit_events", "seq", nullable=False)
    op.alter_column("audit_events", "prev_hash", nullable=False)
    op.alter_column("audit_events", "hash", nullable=False)
    op.create_index("ux_audit_events_seq", "audit_events", ["seq"], unique=True)
    op.execute("CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events "
               "FOR EACH ROW EXECUTE FUNCTION audit_events_chain()")
    # the head moves only through the chain trigger
    op.execute("""
        CREATE FUNCTION audit_chain_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'UPDATE' OR pg_trigger_depth() < 2 THEN
                RAISE EXCEPTION 'audit_chain_head is maintained by the audit trigger only'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$;
    """)
    op.execute("CREATE TRIGGER audit_chain_head_guard BEFORE UPDATE OR DELETE OR INSERT ON "
               "audit_chain_head FOR EACH ROW EXECUTE FUNCTION audit_chain_head_guard()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_chain_head_guard ON audit_chain_head")
    op.execute("DROP FUNCTION IF EXISTS audit_chain_head_guard()")
    op.execute("DROP TRIGGER IF EXISTS audit_events_chain ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_events_chain()")
    op.drop_index("ux_audit_events_seq", "audit_events")
    op.drop_table("audit_chain_head")
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
    op.drop_column("audit_events", "hash")
    op.drop_column("audit_events", "prev_hash")
    op.drop_column("audit_events", "seq")
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update")
