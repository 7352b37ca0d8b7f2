"""A deep ADTN's initial gates: identity plus noise (a boundary gate keeps its [:, :, 0, 0] slice), or given."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ...errors import AdtnError, ShapeError
from ...initializers import identity_like
from .structure import DeepTN

__all__ = ["GateInit", "initial_gates", "preserve_norm"]

GateInit = str | Mapping[str, torch.Tensor] | Callable[[str, tuple[int, ...]], torch.Tensor]


def initial_gates(
    deep: DeepTN, init: GateInit, noise: float, dtype: torch.dtype, gen: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """One tensor per gate node: identity + noise (boundary gates: its [:, :, 0, 0] slice), or given."""
    out: dict[str, torch.Tensor] = {}
    names = [n for _, n in deep.gates()]
    if isinstance(init, Mapping):
        unknown = sorted(set(init) - set(names))
        missing = [n for n in names if n not in init]
        if unknown or missing:
            raise AdtnError(f"adtn init: unknown gates {unknown[:4]}, missing gates {missing[:4]}; "
                            f"gates are named like {names[:3]}")
    elif not callable(init) and init != "identity":
        raise AdtnError(f"adtn init: must be 'identity', a dict gate -> tensor or a callable (name, shape), got {init!r}")
    for m, name in deep.gates():
        shape = deep.operators[m].shape(name)
        if isinstance(init, Mapping) or callable(init):
            t = torch.as_tensor(init[name] if isinstance(init, Mapping) else init(name, shape))
            if tuple(t.shape) != shape:
                raise ShapeError(f"adtn init for gate {name!r}: expected shape {shape}, got {tuple(t.shape)}")
            out[name] = t.detach().to(dtype).clone()
            continue
        full = identity_like((2, 2, 2, 2), torch.float64) + noise * torch.randn(2, 2, 2, 2, dtype=torch.float64,
                                                                               generator=gen)
        out[name] = (full if len(shape) == 4 else full[:, :, 0, 0]).to(dtype).contiguous()
    return out


def preserve_norm(deep: DeepTN, gates: Mapping[str, torch.Tensor]) -> None:
    """Rescale full gates in place to Frobenius norm 2 (the identity's: mean square preserved on
    a random state), times the ReLU gain sqrt(2 / (1 + slope^2)) spread over a layer's gates."""
    gain = {"relu": 2.0, "leaky_relu": 2.0 / (1.0 + deep.negative_slope**2)}.get(deep.activation, 1.0)
    with torch.no_grad():
        for m, op in enumerate(deep.operators):
            names = op.nodes_with_role("param")
            full = [n for n in names if gates[n].dim() == 4]
            per_gate = gain ** (0.5 / max(len(full), 1)) if m < deep.depth - 1 else 1.0
            for n in full:
                gates[n].mul_(2.0 * per_gate / gates[n].norm().clamp_min(1e-12))
