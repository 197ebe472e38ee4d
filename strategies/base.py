"""The strategy protocol (re-exported from ``bot.ports`` so strategies need not know the bot)."""

from bot.ports import PortfolioView, SignalSource, Strategy

__all__ = ["PortfolioView", "SignalSource", "Strategy"]
