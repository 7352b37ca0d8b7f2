"""Dense tensor -> factors: TT, TT-matrix, TR, HT, Tucker, CP and Kronecker decompositions in pure torch."""

from .cp import cp_als, cp_to_tensor
from .ht import HT, ht_svd, ht_to_tensor, ht_tree
from .kronecker import kron_to_tensor, kronecker_svd
from .svd import left_factor, rank_for_tol, truncated_svd
from .tr import tr_svd, tr_to_tensor
from .tt import tt_matrix_svd, tt_matrix_to_matrix, tt_svd, tt_to_tensor
from .tucker import hosvd, mode_product, tucker_to_tensor

__all__ = [
    "HT",
    "cp_als",
    "cp_to_tensor",
    "hosvd",
    "ht_svd",
    "ht_to_tensor",
    "ht_tree",
    "kron_to_tensor",
    "kronecker_svd",
    "left_factor",
    "mode_product",
    "rank_for_tol",
    "tr_svd",
    "tr_to_tensor",
    "truncated_svd",
    "tt_matrix_svd",
    "tt_matrix_to_matrix",
    "tt_svd",
    "tt_to_tensor",
    "tucker_to_tensor",
]
