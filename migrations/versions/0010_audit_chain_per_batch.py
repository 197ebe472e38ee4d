"""the audit chain of a bulk write is computed once per batch, in one function call

Until now every audit row went through the row trigger of migration 0007: a PL/pgSQL call
per row that reads and checks the carried head and writes it back. A backtest's batch of
thousands of audit rows paid that call thousands of times (41,659 rows: 1.11 s of the
server's time, 0.34 s of it the insert itself).

Now the service COPYs a unit's audit rows into ``audit_inbox`` (unlogged: a row lives there
only inside the transaction that chains it) and calls
``audit_append_inbox()``. That function takes the chain's head under the same lock as the
row trigger (``FOR UPDATE`` on ``audit_chain_head``, or the head carried in
``stackbot.audit_head`` and checked against ``audit_events``), computes every row's seq,
prev_hash and hash in one loop, in inbox order, with the same canonical text and the same
SHA-256, inserts them in one statement and empties the inbox. The chain is the one the row
trigger would have written, so ``stackbot audit verify`` and the anchors are untouched
(``tests/test_audit_chain.py`` checks both paths give the same hashes).

Who may skip the row trigger: an insert whose ``current_user`` is the owner of
``audit_events`` and whose transaction the function has marked (``stackbot.audit_batch``),
that is the function itself, which runs as the owner (SECURITY DEFINER). The service's login
is never the owner (``bot/ledger/logins.py``), so setting the mark itself gains it nothing:
its own inserts into ``audit_events`` are still chained row by row, whatever they carry. The
owner, who could already disable the trigger, gains nothing either.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ROLE = "stackbot_app"

CANONICAL = ("concat_ws('|', s::text, r.account, r.run_id, "
             "(floor(extract(epoch from r.ts) * 1000))::bigint::text, r.kind, r.entity, "
             "r.entity_id, r.payload::text, h)")


def upgrade() -> None:
    create_inbox()
    op.execute("""
        CREATE FUNCTION audit_batch_trusted() RETURNS boolean LANGUAGE sql STABLE AS $$
            -- never NULL: an unset mark must not read as "not untrusted" in the WHEN clause
            SELECT coalesce(current_setting('stackbot.audit_batch', true)
                            = txid_current()::text, false)
               AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                                   WHERE oid = 'public.audit_events'::regclass)
        $$
    """)
    op.execute("DROP TRIGGER audit_events_chain ON audit_events")
    op.execute("CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events FOR EACH ROW "
               "WHEN (NOT audit_batch_trusted()) EXECUTE FUNCTION audit_events_chain()")


def create_inbox() -> None:
    """The inbox and ``audit_append_inbox()`` as this revision made them (what migration
    0013's downgrade puts back)."""
    op.execute("""
        CREATE UNLOGGED TABLE audit_inbox (
            id BIGSERIAL PRIMARY KEY,
            account TEXT NOT NULL,
            run_id VARCHAR(32) NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            kind TEXT NOT NULL,
            entity TEXT NOT NULL,
            entity_id TEXT NOT NULL,
            payload JSONB NOT NULL
        )
    """)
    op.execute(f"GRANT INSERT ON audit_inbox TO {ROLE}")
    op.execute(f"GRANT USAGE ON SEQUENCE audit_inbox_id_seq TO {ROLE}")
    op.execute(f"""
        CREATE FUNCTION audit_append_inbox() RETURNS bigint LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            tx text := txid_current()::text;
            carried text := current_setting('stackbot.audit_head', true);
            s bigint;
            h text;
            r record;
            ids bigint[] := '{{}}';
            seqs bigint[] := '{{}}';
            prevs text[] := '{{}}';
            hashes text[] := '{{}}';
        BEGIN
            IF carried IS NOT NULL AND split_part(carried, ':', 1) = tx THEN
                s := split_part(carried, ':', 2)::bigint;
                h := split_part(carried, ':', 3);
                PERFORM 1 FROM audit_events WHERE seq = s AND hash = h;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'stackbot.audit_head names no link of the audit chain'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSE
                SELECT seq, hash INTO s, h FROM audit_chain_head WHERE id = 1 FOR UPDATE;
            END IF;
            FOR r IN SELECT * FROM audit_inbox ORDER BY id LOOP
                s := s + 1;
                ids := ids || r.id;
                seqs := seqs || s;
                prevs := prevs || h;
                h := encode(sha256(convert_to({CANONICAL}, 'UTF8')), 'hex');
                hashes := hashes || h;
            END LOOP;
            IF cardinality(ids) = 0 THEN
                RETURN 0;
            END IF;
            -- the statement trigger moves the head from here, as after the row trigger
            PERFORM set_config('stackbot.audit_head', tx || ':' || s || ':' || h, true);
            PERFORM set_config('stackbot.audit_batch', tx, true);
            INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload,
                                      seq, prev_hash, hash)
                SELECT i.account, i.run_id, i.ts, i.kind, i.entity, i.entity_id, i.payload,
                       c.seq, c.prev_hash, c.hash
                FROM unnest(ids, seqs, prevs, hashes) AS c(id, seq, prev_hash, hash)
                JOIN audit_inbox i ON i.id = c.id
                ORDER BY c.seq;
            PERFORM set_config('stackbot.audit_batch', '', true);
            DELETE FROM audit_inbox WHERE id = ANY(ids);
            RETURN cardinality(ids);
        END $$
    """)
    op.execute("REVOKE ALL ON FUNCTION audit_append_inbox() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION audit_append_inbox() TO {ROLE}")


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_chain ON audit_events")
    op.execute("CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events FOR EACH ROW "
               "EXECUTE FUNCTION audit_events_chain()")
    op.execute("DROP FUNCTION audit_append_inbox()")
    op.execute("DROP FUNCTION audit_batch_trusted()")
    op.execute("DROP TABLE audit_inbox")
