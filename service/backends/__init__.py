"""Inference backends: each turns a batch of window inputs into building probabilities."""

from .base import Backend

__all__ = ["Backend"]
