"""Policies of ``compress``: which layers are compressed, and which formats each one tries."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..api import is_lazy
from ..errors import AdtnError, RankError, TemplateError
from ..templates import get, names, policy_members
from .sizes import SIZE_KEYS, Job

__all__ = ["POLICIES", "SUPPORTED", "attention_weights", "candidates_for", "default_candidates", "lookup",
           "make_jobs", "policy_names", "policy_text", "skipped_by"]

POLICIES = ("hybrid", "mixed", "auto")
SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def default_candidates(kind: str) -> list[str]:
    """The templates ``auto`` tries on a ``kind`` ("linear" / "conv") layer: the formats that join
    the ``auto`` policy there (``Format.policies``; all built-in ones that fit but ``adtn``,
    whose fitting is slow, and ``semi_*``)."""
    return policy_members("auto", kind)


def policy_names() -> str:
    return f"template names {names()}, {', '.join(repr(p) for p in POLICIES)}, or a dict / callable from layer name"


def candidates_for(where: str, value: Any, kind: str, candidates: Sequence[str] | None) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in candidates_for(where, v, kind, candidates)]
    if not isinstance(value, str):
        raise TemplateError(f"{where}: a policy value must be a template or policy name, an options dict or None, "
                            f"got {value!r}")
    if value == "auto":  # the caller's candidates (or the default pool), plus the formats that always join
        pool = [c for c in (candidates or default_candidates(kind)) if kind in get(c).kinds]
        return pool + [c for c in policy_members("auto_always", kind) if c not in pool]
    if value in POLICIES:  # the formats that declare they join this policy on this kind of layer
        return policy_members(value, kind)
    if value not in names():
        raise TemplateError(f"{where}: unknown policy {value!r}; valid: {policy_names()}")
    return [value]


def lookup(policy: Any, name: str, module: nn.Module) -> Any:
    if isinstance(policy, Mapping):
        for key, value in policy.items():
            if name == key or fnmatch.fnmatchcase(name, key):
                return value
        return None
    if callable(policy) and not isinstance(policy, str):
        try:
            n = len([p for p in inspect.signature(policy).parameters.values() if p.default is p.empty])
        except (TypeError, ValueError):
            n = 1
        return policy(name, module) if n >= 2 else policy(name)
    return policy


def skipped_by(name: str, module: nn.Module, skip: Sequence[Any]) -> bool:
    for s in skip:
        if isinstance(s, type) and isinstance(module, s):
            return True
        if isinstance(s, str) and (name == s or name.startswith(s + ".") or fnmatch.fnmatchcase(name, s)):
            return True
    return False


def make_jobs(model: nn.Module, policy: Any, skip: Sequence[Any], options: dict[str, Any],
          candidates: Sequence[str] | None, budget: float | None) -> tuple[list[Job], list[tuple[str, str]]]:
    from ..layers import TNLayer

    jobs, skipped = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) and not skipped_by(name, module, skip):
            skipped += attention_weights(name, module)
        if not isinstance(module, SUPPORTED) or isinstance(module, TNLayer):
            continue
        where = f"compress: layer {name or '.'!r} ({type(module).__name__})"
        if skipped_by(name, module, skip):
            skipped.append((name, "skip"))
            continue
        if is_lazy(module):
            raise AdtnError(f"{where}: a lazy layer whose weight is not initialised yet; run one forward pass of "
                            "the model first")
        value = lookup(policy, name, module)
        if value is None:
            skipped.append((name, "the policy leaves it dense"))
            continue
        opts = dict(options)
        if isinstance(value, Mapping):
            opts.update({k: v for k, v in value.items() if k != "template"})
            if "template" not in value:
                raise TemplateError(f"{where}: an options dict needs a 'template' key, got {dict(value)}")
            value = value["template"]
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        if value == "auto":
            opts.setdefault("shape", "auto")
        cands = list(dict.fromkeys(candidates_for(where, value, kind, candidates)))
        fixed = any(opts.get(k) is not None for k in SIZE_KEYS)
        if not fixed and budget is None:
            raise RankError(f"{where}: give budget= (a fraction of the parameters) or a size (rank=, depth=, tol=) "
                            "in the options")
        opts.setdefault("init", "auto")
        jobs.append(Job(name, module, cands, opts, fixed))
    return jobs, skipped


def attention_weights(name: str, module: nn.MultiheadAttention) -> list[tuple[str, str]]:
    """The skipped entries of an attention layer's q/k/v weights: parameters, not nn.Linear layers."""
    fused = [p for p in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
             if getattr(module, p, None) is not None]
    why = "a q/k/v projection parameter of nn.MultiheadAttention, not an nn.Linear layer (only its out_proj is one)"
    return [(f"{name}.{p}" if name else p, why) for p in fused]


def policy_text(policy: Any) -> str:
    if isinstance(policy, str):
        return policy
    if isinstance(policy, Mapping):
        return "dict(" + ", ".join(f"{k}={v!r}" for k, v in policy.items()) + ")"
    return getattr(policy, "__name__", type(policy).__name__)
