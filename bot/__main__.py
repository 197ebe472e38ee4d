"""``python -m bot`` and the ``stackbot`` command. An ensemble backtest asked for on the command
line starts its look-ahead process first thing (``models/ahead_worker.py``: torch's import
there, 1.5 s of CPU, overlaps this process's own start, which then needs no torch); the run
takes it over, or closes it where the settings have it compute elsewhere."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["backtest"] and any(
            a == "--strategy=ensemble" or (a == "--strategy" and args[i + 1:i + 2] == ["ensemble"])
            for i, a in enumerate(args)):
        from models.ahead_worker import start_early

        start_early()
    from bot.cli import app

    app(prog_name="stackbot")


if __name__ == "__main__":
    main()
