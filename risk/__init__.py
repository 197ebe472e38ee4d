"""Risk: the mandatory gate between a strategy's intent and an order."""
