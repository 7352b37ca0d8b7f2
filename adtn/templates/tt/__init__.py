"""``tt`` (tensor train / TT-matrix / MPO) and ``tr`` (tensor ring): chains of cores (see ``build``)."""

from ..init_chain import init_tr, init_tt
from ..registry import register
from .build import (
    Chain,
    Site,
    bond_names,
    chain_bounds,
    chain_sites,
    kernel_site,
    outputs_of,
    tr_params,
    tt_params,
)
from .build import build_tr as _build_tr
from .build import build_tt as _build_tt
from .search import tr_candidates, tt_candidates

__all__ = ["Chain", "Site", "bond_names", "build_tr", "build_tt", "chain_bounds", "chain_sites", "kernel_site",
           "outputs_of", "tr_params", "tt_params"]

build_tt = register("tt", count=tt_params, decompose=init_tt, candidates=tt_candidates,
                    policies={"hybrid": ("conv",), "auto": ("linear", "conv")},
                    example=({"out": 64, "in": 64}, {"rank": 4}))(_build_tt)
build_tr = register("tr", count=tr_params, decompose=init_tr, candidates=tr_candidates, estimated=True,
                    policies={"auto": ("linear", "conv")},
                    example=({"out": 64, "in": 64}, {"rank": 4}))(_build_tr)
