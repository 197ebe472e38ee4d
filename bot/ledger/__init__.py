"""The PostgreSQL ledger: tables, the repository that commits a change with its audit event in
one transaction, URL handling and the embedded server."""
