"""Market data in: live (ccxt) and replay (files), both emitting closed candles in order."""
