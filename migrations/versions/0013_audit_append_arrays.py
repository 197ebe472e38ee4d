"""a batch's audit rows reach the chain as arrays, in one call, without an inbox table

Migration 0010 chained a batch in one function call, but through a table: the service COPYed
the rows into ``audit_inbox``, ``audit_append_inbox()`` read them back in a loop, joined its
hashes to them again by id, sorted the result by seq, inserted it and deleted the inbox rows.
The deleted rows bloated the inbox within a run (every later batch scanned them again), and
the join and sort of a 20,000-row batch spilled to disk at the default ``work_mem``.

Now the service passes the rows as one array per column to ``audit_append(...)``. The function
takes the chain's head exactly as before (``FOR UPDATE`` on ``audit_chain_head``, or the head
carried in ``stackbot.audit_head`` and checked against ``audit_events``), computes seq,
prev_hash and hash in one loop over the arrays in their order, with the same canonical text
and SHA-256, and inserts the rows with their links straight from the arrays: no table, no
join, no sort, nothing to delete. Measured in the eight-pair benchmark (183,117 audit rows in
14 calls, ``track_functions``): the function's server time 2.64 s -> 2.32 s, and the inbox's
COPY is gone; most of what is left is the insert itself (the table and its four indexes), so
the whole run gains little, within this machine's noise. The chain is the one the row trigger
would have written, so ``stackbot audit verify`` and the anchors are untouched
(``tests/test_audit_chain.py`` checks both paths give the same hashes). Who may insert past
the row trigger is unchanged (``audit_batch_trusted()``, migration 0012): the function runs
as its owner and marks its own transaction.

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
SIGNATURE = ("audit_append(text[], text[], timestamptz[], text[], text[], text[], jsonb[])")
# the canonical text of a link, as the row trigger (0007) and 0010 make it
CANONICAL = ("concat_ws('|', s::text, r.account, r.run_id, "
             "(floor(extract(epoch from r.ts) * 1000))::bigint::text, r.kind, r.entity, "
             "r.entity_id, r.payload::text, h)")


def upgrade() -> None:
    op.execute(f"""
        CREATE FUNCTION audit_append(accounts text[], run_ids text[], stamps timestamptz[],
                                     kinds text[], entities text[], entity_ids text[],
                                     payloads jsonb[]) RETURNS bigint LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = public AS $$
        DECLARE
            tx text := txid_current()::text;
            carried text := current_setting('stackbot.audit_head', true);
            n int := coalesce(cardinality(accounts), 0);
            s bigint;
            s0 bigint;
            h text;
            h0 text;
            r record;
            hashes text[] := '{{}}';
        BEGIN
            IF n = 0 THEN
                RETURN 0;
            END IF;
            IF coalesce(cardinality(run_ids), -1) <> n OR coalesce(cardinality(stamps), -1) <> n
               OR coalesce(cardinality(kinds), -1) <> n
               OR coalesce(cardinality(entities), -1) <> n
               OR coalesce(cardinality(entity_ids), -1) <> n
               OR coalesce(cardinality(payloads), -1) <> n THEN
                RAISE EXCEPTION 'audit_append: every column must hold % rows', n
                    USING ERRCODE = 'invalid_parameter_value';
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
            -- unnest reads the arrays out in their order: row i is the i-th of every column
            FOR r IN SELECT * FROM unnest(accounts, run_ids, stamps, kinds, entities,
                                          entity_ids, payloads)
                     AS u(account, run_id, ts, kind, entity, entity_id, payload) LOOP
                s := s + 1;
                h := encode(sha256(convert_to({CANONICAL}, 'UTF8')), 'hex');
                hashes := hashes || h;
            END LOOP;
            -- the statement trigger moves the head from here, as after the row trigger
            PERFORM set_config('stackbot.audit_head', tx || ':' || s || ':' || h, true);
            PERFORM set_config('stackbot.audit_batch', tx, true);
            INSERT INTO audit_events (account, run_id, ts, kind, entity, entity_id, payload,
                                      seq, prev_hash, hash)
                SELECT u.account, u.run_id, u.ts, u.kind, u.entity, u.entity_id, u.payload,
                       s0 + u.i, u.prev_hash, u.hash
                FROM unnest(accounts, run_ids, stamps, kinds, entities, entity_ids, payloads,
                            array_prepend(h0, hashes[1:n - 1]), hashes) WITH ORDINALITY
                     AS u(account, run_id, ts, kind, entity, entity_id, payload, prev_hash,
                          hash, i);
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
