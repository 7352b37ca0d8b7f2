"""Kronecker's shape-search hook: every split of every axis over its divisors (Van Loan's exact error)."""

from __future__ import annotations

from typing import Any

from .build import default_factors

__all__ = ["kronecker_candidates"]


def kronecker_candidates(ctx: Any) -> list:
    """The default split, then every split on the weight's axes and their padded variants."""
    return ctx.kronecker(default_factors)
