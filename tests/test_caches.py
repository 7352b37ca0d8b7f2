"""Per-layer caches (forward choices, chain plans, contraction plans) stay bounded however many
batch sizes a layer sees, and keep the most recent ones."""

import importlib
import pickle

import pytest
import torch
from torch import nn

from adtn.layers import TNConv2d, TNLinear
from adtn.layers.linear import CHOICES
from adtn.module import PLANS
from adtn.tracing import LRUCache

planning = importlib.import_module("adtn.plan")  # the module (``adtn.plan`` is also the function)


def _caches(layer: nn.Module) -> dict[str, int]:
    sizes = {"choices": len(layer._choices), "chains": len(layer._chains)}
    for name, m in layer.named_modules():
        if hasattr(m, "_plans"):
            sizes[f"plans {name}"] = len(m._plans)
    return sizes


LAYERS = {
    "tt_linear": (lambda: TNLinear(24, 20, template="tt", rank=2, forward="direct"), (24,)),
    "auto_linear": (lambda: TNLinear(24, 20, template="tr", rank=2), (24,)),
    "conv_unfold": (lambda: TNConv2d(4, 6, 3, template="tt", rank=2, forward="direct"), (4, 5, 5)),
    "deep_adtn_streams": (lambda: TNLinear(16, 16, template="adtn", depth=1, forward="direct"), (16,)),
    "deep_adtn_depth2": (lambda: TNLinear(16, 16, template="adtn", depth=2), (16,)),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_sixty_batch_sizes_leave_bounded_caches(case):
    make, shape = LAYERS[case]
    layer = make()
    with torch.no_grad():
        for batch in range(1, 61):
            layer(torch.randn(batch, *shape))
    sizes = _caches(layer)
    assert sizes["choices"] <= CHOICES < 60
    assert sizes["chains"] <= CHOICES
    assert all(n <= PLANS for k, n in sizes.items() if k.startswith("plans"))
    assert max(sizes.values()) >= min(PLANS, CHOICES)  # the caches were used (and filled up to their bound)
    assert any(key[0][0] == 60 for key in layer._choices)  # the most recent size is kept
    assert len(planning._CACHE) <= planning._CACHE.maxsize


def test_lru_cache_evicts_the_least_recently_used():
    cache = LRUCache(3)
    for k in "abc":
        cache[k] = k.upper()
    assert cache.get("a") == "A"  # a is now the most recent
    cache["d"] = "D"
    assert list(cache) == ["c", "a", "d"] and cache.get("b") is None
    assert pickle.loads(pickle.dumps(cache)).maxsize == 3


def test_pickled_layer_comes_back_with_empty_bounded_caches():
    layer = TNLinear(24, 20, template="tt", rank=2, forward="direct")
    with torch.no_grad():
        for batch in (1, 2, 3):
            layer(torch.randn(batch, 24))
    clone = pickle.loads(pickle.dumps(layer))
    assert isinstance(clone._choices, LRUCache) and not clone._choices and not clone.tn._plans
    x = torch.randn(4, 24)
    torch.testing.assert_close(clone(x), layer(x))
