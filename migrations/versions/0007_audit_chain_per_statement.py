"""the audit chain's head moves once per statement, not once per row

Migration 0004 locked, read and rewrote the single ``audit_chain_head`` row for every audit
row inserted. Inside one transaction every rewrite adds a version of that row which nothing
can prune until the transaction ends, so each lookup walked all the versions before it: a
bulk insert of n rows cost O(n^2). 41,659 audit rows in one transaction took 42.7 s.

Now the row trigger reads the head (under the same ``FOR UPDATE`` lock) only on the
transaction's first audit row, and carries it from row to row in a transaction-local setting,
``stackbot.audit_head`` (``txid:seq:hash``). An ``AFTER ... FOR EACH STATEMENT`` trigger
writes the head once per statement. The chain itself is unchanged: the same seq, the same
canonical text, the same SHA-256, so ``stackbot audit verify`` and the anchors are untouched.

The setting is not trusted. Before a carried head is used, the row it names must exist with
that seq and that hash, and ``seq`` is unique: a client that sets the value itself can only
point at the chain's real last link, and then it appends exactly what the trigger would have.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""
from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CANONICAL = ("concat_ws('|', NEW.seq::text, NEW.account, NEW.run_id, "
             "(floor(extract(epoch from NEW.ts) * 1000))::bigint::text, NEW.kind, NEW.entity, "
             "NEW.entity_id, NEW.payload::text, NEW.prev_hash)")

OLD_ROW_FUNCTION = f"""
    CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public AS $$
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
"""


def upgrade() -> None:
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            tx text := txid_current()::text;
            carried text := current_setting('stackbot.audit_head', true);
            head_seq bigint;
            head_hash text;
        BEGIN
            IF carried IS NOT NULL AND split_part(carried, ':', 1) = tx THEN
                head_seq := split_part(carried, ':', 2)::bigint;
                head_hash := split_part(carried, ':', 3);
                PERFORM 1 FROM audit_events WHERE seq = head_seq AND hash = head_hash;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'stackbot.audit_head names no link of the audit chain'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSE
                SELECT seq, hash INTO head_seq, head_hash FROM audit_chain_head WHERE id = 1
                    FOR UPDATE;
            END IF;
            NEW.seq := head_seq + 1;
            NEW.prev_hash := head_hash;
            NEW.hash := encode(sha256(convert_to({CANONICAL}, 'UTF8')), 'hex');
            PERFORM set_config('stackbot.audit_head', tx || ':' || NEW.seq || ':' || NEW.hash,
                               true);
            RETURN NEW;
        END $$;
    """)
    op.execute("""
        CREATE FUNCTION audit_events_chain_head() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            carried text := current_setting('stackbot.audit_head', true);
        BEGIN
            IF carried IS NOT NULL AND split_part(carried, ':', 1) = txid_current()::text THEN
                UPDATE audit_chain_head SET seq = split_part(carried, ':', 2)::bigint,
                                            hash = split_part(carried, ':', 3)
                    WHERE id = 1 AND seq < split_part(carried, ':', 2)::bigint;
            END IF;
            RETURN NULL;
        END $$;
    """)
    op.execute("CREATE TRIGGER audit_events_chain_head AFTER INSERT ON audit_events "
               "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_chain_head()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_events_chain_head ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_events_chain_head()")
    op.execute(OLD_ROW_FUNCTION)
