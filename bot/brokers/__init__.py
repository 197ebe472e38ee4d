"""Brokers behind one port: the paper fill model and real ccxt orders."""
