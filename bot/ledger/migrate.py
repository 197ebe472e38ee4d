"""Apply the Alembic migrations from code (``stackbot db upgrade`` and start-up)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

# The newest migration. Start-up compares it with the database and only imports Alembic (slow
# to import) when there is something to do; a test keeps it equal to Alembic's own head.
HEAD = "0013"


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        try:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except ProgrammingError:  # no alembic_version table: a fresh database
            return None


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str:
    """Upgrade to ``revision``; returns the revision the database is at afterwards."""
    if revision == "head" and await current_revision(engine) == HEAD:
        return HEAD
    from alembic import command

    cfg = alembic_config()

    def _upgrade(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        # one upgrade at a time, even with several processes starting together
        await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7261903)")
        await conn.run_sync(_upgrade)
    rev = await current_revision(engine)
    assert rev is not None
    return rev
