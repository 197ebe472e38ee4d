"""A loopback exchange simulator speaking the Binance spot protocol."""
