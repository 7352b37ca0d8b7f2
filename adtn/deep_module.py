"""Moved to ``adtn.templates.adtn.module``; kept for one version so old imports and pickled .pt files load."""

from .templates.adtn.module import DeepTNModule, GateInit

__all__ = ["DeepTNModule", "GateInit"]
