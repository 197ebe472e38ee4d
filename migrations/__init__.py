"""Alembic environment and versions of the ledger schema (shipped as a package so that
``stackbot db upgrade`` finds them in any install)."""
