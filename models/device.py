"""Which torch device a run uses."""

from __future__ import annotations

import torch


def pick_device(requested: str) -> str:
    """``auto``: CUDA when present, the CPU otherwise; anything else as asked."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
