"""``semi_tt`` and ``semi_tr``: TT / TR chains whose cores are joined by the semi-tensor product (see ``build``)."""

from ..init_chain import init_semi_tr, init_semi_tt
from ..registry import register
from .build import build_semi_tr as _build_semi_tr
from .build import build_semi_tt as _build_semi_tt
from .build import semi_tr_params, semi_tt_params
from .search import semi_tr_candidates, semi_tt_candidates

__all__ = ["build_semi_tr", "build_semi_tt", "semi_tr_params", "semi_tt_params"]

build_semi_tt = register("semi_tt", count=semi_tt_params, decompose=init_semi_tt, candidates=semi_tt_candidates,
                         t_in_modes=-1,  # A's in modes: all but the last
                         example=({"out": 64, "in": 64}, {"rank": 4}))(_build_semi_tt)
build_semi_tr = register("semi_tr", count=semi_tr_params, decompose=init_semi_tr, candidates=semi_tr_candidates,
                         estimated=True, t_in_modes=0,  # every core is an A
                         example=({"out": 64, "in": 64}, {"rank": 4}))(_build_semi_tr)
