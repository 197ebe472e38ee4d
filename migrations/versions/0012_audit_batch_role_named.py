"""the audit row trigger's WHEN clause no longer reads the catalog for every row

Migration 0010 lets ``audit_append_inbox()`` (SECURITY DEFINER) insert a chained batch past the
row trigger: the trigger's ``WHEN (NOT audit_batch_trusted())`` holds for every insert except
one whose transaction carries the function's mark and whose ``current_user`` is the owner of
``audit_events``. That owner was looked up in ``pg_class`` by a subquery, evaluated for every
row of every batch: 8 microseconds a row, 130 ms of the 443 ms a 16,000-row batch took on the
server (``psql \\timing``, the benchmark's own rows), and 1.4 s of the server's CPU in the
eight-pair benchmark (183,117 audit rows).

Now the role is written into the function when this migration runs: the role that runs it,
which owns ``audit_append_inbox()`` (the migrations create it) and so is ``current_user``
inside it. The rule is unchanged: only an insert that runs with that role's rights, in a
transaction the function marked, skips the row trigger. The service's login is never that role
(``bot/ledger/logins.py``): marking its own transaction still gains it nothing
(``tests/test_audit_chain.py``). A later ``ALTER FUNCTION ... OWNER`` to another role makes the
batch path chain row by row again, which is slower and still correct.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        DO $do$ BEGIN
            EXECUTE format($f$
                CREATE OR REPLACE FUNCTION audit_batch_trusted() RETURNS boolean
                LANGUAGE sql STABLE AS $b$
                    -- never NULL: an unset mark must not read as "not untrusted"
                    SELECT coalesce(current_setting('stackbot.audit_batch', true)
                                    = txid_current()::text, false)
                       AND current_user = %L::name
                $b$ $f$, current_user);
        END $do$
    """)


def downgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION audit_batch_trusted() RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT coalesce(current_setting('stackbot.audit_batch', true)
                            = txid_current()::text, false)
               AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                                   WHERE oid = 'public.audit_events'::regclass)
        $$
    """)
