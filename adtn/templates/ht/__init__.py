"""``ht``: the hierarchical Tucker tree (see ``build``)."""

from ..registry import register
from ..tt.search import tt_candidates
from .build import build_ht as _build_ht
from .build import ht_params, ht_tree
from .decompose import init_ht

__all__ = ["build_ht", "ht_params", "ht_tree", "init_ht"]

build_ht = register("ht", count=ht_params, decompose=init_ht, candidates=tt_candidates,
                    policies={"hybrid": ("linear",), "auto": ("linear", "conv")},
                    example=({"out": 256, "in": 256}, {"rank": 4}))(_build_ht)
