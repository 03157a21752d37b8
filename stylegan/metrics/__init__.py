"""Evaluation metrics: SWD, deep-feature FD/KID/precision-recall, FID when weights exist, novelty.

``evaluate_generator`` is imported lazily so that the image-level metrics (``swd``, ``stats``,
``effnet``) work without the sampling code loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_generator"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_generator":
        from stylegan.metrics.evaluate import evaluate_generator

        return evaluate_generator
    raise AttributeError(f"module 'stylegan.metrics' has no attribute {name!r}")
