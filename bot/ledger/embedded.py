"""An embedded PostgreSQL (the ``pgserver`` wheel) under the data directory, so that the
default run and the production run use the same database engine."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from bot.errors import LedgerError

DATABASE = "stackbot"
_servers: dict[Path, Any] = {}


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded server under ``data_dir/postgres`` and return its URL.

    The server stops when the last process using it exits.
    """
    pgdata = (data_dir / "postgres").resolve()
    server = _servers.get(pgdata)
    if server is None:
        pgdata.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import pgserver

                server = pgserver.get_server(pgdata, cleanup_mode="stop")
            except Exception as exc:  # pgserver raises plain exceptions on start failures
                raise LedgerError(
                    f"embedded PostgreSQL under {pgdata} failed to start: {exc}"
                ) from exc
        _servers[pgdata] = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE};")
    return str(server.get_uri(DATABASE))
