"""stackbot: the service (config, engine, feeds, brokers, ledger, bus, CLI)."""

__version__ = "0.1.0"
