"""Strategies turn signals into order intents. ``strategies.base`` holds the protocol."""
