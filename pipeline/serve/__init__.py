"""The scoring host the local target runs: Azure ML's score.py contract and routes, micro-batched."""

from __future__ import annotations

from pipeline.serve.config import ServeConfig
from pipeline.serve.supervisor import main, serve

__all__ = ["ServeConfig", "main", "serve"]
