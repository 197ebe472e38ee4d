"""The operator console (``stackbot serve``): a REST API and a server-rendered dashboard over
the ledger, with the kill switch. ``app`` builds it; ``auth`` says who may use it; ``views``
reads the ledger; ``api`` and ``pages`` are the routes; ``charts`` draws the equity curve."""
