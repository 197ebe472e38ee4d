"""the application role: everything it needs and no way to rewrite the audit trail

``stackbot_app`` (NOLOGIN; the service switches to it with SET ROLE after migrating as the
owner) may read, insert and update the ledger, but on ``audit_events`` it may only read and
insert, and it may not touch ``audit_chain_head`` or ``alembic_version`` at all except to
read. Nothing may be deleted or truncated. The chain trigger runs with its owner's rights
(SECURITY DEFINER), so inserts still advance the chain head.

Creating a role needs CREATEROLE; where the migrating user lacks it, a DBA creates
``stackbot_app`` first and this migration only grants.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""
from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLE = "stackbot_app"


def upgrade() -> None:
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object THEN NULL;  -- created concurrently
        END $$;
    """)
    op.execute(f"GRANT {ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {ROLE}")
    op.execute(f"REVOKE UPDATE, INSERT ON audit_events, audit_chain_head, alembic_version "
               f"FROM {ROLE}")
    op.execute(f"GRANT INSERT ON audit_events TO {ROLE}")
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ROLE}")
    op.execute("ALTER FUNCTION audit_events_chain() SECURITY DEFINER")
    op.execute("ALTER FUNCTION audit_events_chain() SET search_path = public")


def downgrade() -> None:
    op.execute("ALTER FUNCTION audit_events_chain() SECURITY INVOKER")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
