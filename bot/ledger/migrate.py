"""Apply the Alembic migrations from code (``stackbot db upgrade`` and start-up)."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def _current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str:
    """Upgrade to ``revision``; returns the revision the database is at afterwards."""
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
