"""Deep-learning signal sources (the model ensemble). The engine reaches them only through
``bot.ports.SignalSource``; until the ensemble lands, ``strategies.baseline`` is the source."""
