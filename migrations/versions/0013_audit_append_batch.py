"""a batch's audit rows reach the chain as one JSON text, in one call, without an inbox table

Migration 0010 chained a batch in one function call, but through a table: the service COPYed
the rows into ``audit_inbox``, ``audit_append_inbox()`` read them back in a loop, joined its
hashes to them again by id, sorted the result by seq, inserted it and deleted the inbox rows.
The deleted rows bloated the inbox within a run (every later batch scanned them again), and
the join and sort of a 20,000-row batch spilled to disk at the default ``work_mem``.

Now the service passes a batch as one JSON text, an array of
``[account, run_id, ts_ms, kind, entity, entity_id, payload]`` rows, to ``audit_append(batch)``
(in calls of at most 4,096 rows; the calls of one transaction continue one chain). One C call
serialises the whole batch on the service's side, where the binary COPY, or an array per
column, cost the writer thread a Python call per row and field while it holds the interpreter
lock that the engine needs. The function takes the chain's head exactly as before
(``FOR UPDATE`` on ``audit_chain_head``, or the head carried in ``stackbot.audit_head`` and
checked against ``audit_events``), computes seq, prev_hash and hash in one loop over the rows
in their order, with the same canonical text and SHA-256, and inserts the rows with their
links straight from the batch: no table, no join, no sort, nothing to delete. A row's time
comes in milliseconds and ``ts`` is made from it exactly. The chain is the one the row
trigger would have written, so ``stackbot audit verify`` and the anchors are untouched
(``tests/test_audit_chain.py``). Who may insert past the row trigger is unchanged
(``audit_batch_trusted()``, migration 0012): the function runs as its owner and marks its own
transaction.

``audit_append_inbox()`` and ``audit_inbox`` are dropped; the downgrade puts them back as
0010 made them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""
from __future__ import annotations

import importlib

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

ROLE = "stackbot_app"
SIGNATURE = "audit_append(text)"
# the canonical text of a link, as the row trigger (0007) and 0010 make it; ``r.ms`` is the
# row's time in milliseconds, which is what 0007 reads back from ``ts``
# (``floor(extract(epoch from ts) * 1000)``): ``ts`` is made from it exactly, below
CANONICAL = ("concat_ws('|', s::text, r.account, r.run_id, r.ms::text, r.kind, r.entity, "
             "r.entity_id, r.payload::text, h)")
SHAPE = "[account, run_id, ts_ms, kind, entity, entity_id, payload]"


def upgrade() -> None:
    op.execute(f"""
        CREATE FUNCTION audit_append(batch text) RETURNS bigint LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            tx text := txid_current()::text;
            carried text := current_setting('stackbot.audit_head', true);
            doc jsonb := batch::jsonb;
            n int;
            s bigint;
            s0 bigint;
            h text;
            h0 text;
            r record;
            hashes text[] := '{{}}';
        BEGIN
            IF jsonb_typeof(doc) IS DISTINCT FROM 'array' OR EXISTS (
                    SELECT 1 FROM jsonb_array_elements(doc) e
                    WHERE jsonb_typeof(e) <> 'array' OR jsonb_array_length(e) <> 7) THEN
                RAISE EXCEPTION 'audit_append: the batch must be a JSON array of {SHAPE} rows'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            n := jsonb_array_length(doc);
            IF n = 0 THEN
                RETURN 0;
            END IF;
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
            s0 := s;
            h0 := h;
            -- the rows in the batch's order
            FOR r IN SELECT e->>0 AS account, e->>1 AS run_id, (e->>2)::bigint AS ms,
                            e->>3 AS kind, e->>4 AS entity, e->>5 AS entity_id, e->6 AS payload
                     FROM jsonb_array_elements(doc) e LOOP
                s := s + 1;
                h := encode(sha256(convert_to({CANONICAL}, 'UTF8')), 'hex');
                hashes := hashes || h;
            END LOOP;
            -- the statement trigger moves the head from here, as after the row trigger
            PERFORM set_config('stackbot.audit_head', tx || ':' || s || ':' || h, true);
            PERFORM set_config('stackbot.audit_batch', tx, true);
            -- ROWS FROM zips the rows with their links, row i with link i
            INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload,
                                      seq, prev_hash, hash)
                SELECT u.e->>0, u.e->>1,
                       'epoch'::timestamptz + (u.e->>2)::bigint * interval '1 millisecond',
                       u.e->>3, u.e->>4, u.e->>5, u.e->6, s0 + u.i, u.prev_hash, u.hash
                FROM ROWS FROM (jsonb_array_elements(doc),
                                unnest(array_prepend(h0, hashes[1:n - 1])), unnest(hashes))
                     WITH ORDINALITY AS u(e, prev_hash, hash, i);
            PERFORM set_config('stackbot.audit_batch', '', true);
            RETURN n;
        END $$
    """)
    op.execute(f"REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {SIGNATURE} TO {ROLE}")
    op.execute("DROP FUNCTION audit_append_inbox()")
    op.execute("DROP TABLE audit_inbox")


def downgrade() -> None:
    importlib.import_module("migrations.versions.0010_audit_chain_per_batch").create_inbox()
    op.execute(f"DROP FUNCTION {SIGNATURE}")
