"""adtn.decompose: exactness at full rank, parity with tensorly, tolerances, optimality, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from adtn.decompose import (
    cp_als,
    cp_to_tensor,
    hosvd,
    ht_svd,
    ht_to_tensor,
    ht_tree,
    kron_to_tensor,
    kronecker_svd,
    left_factor,
    rank_for_tol,
    tr_svd,
    tr_to_tensor,
    truncated_svd,
    tt_matrix_svd,
    tt_matrix_to_matrix,
    tt_svd,
    tt_to_tensor,
    tucker_to_tensor,
)
from adtn.errors import AdtnError, RankError

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def rel(approx: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(approx - ref) / torch.linalg.vector_norm(ref))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def low_rank_tt(shape: tuple[int, ...], rank: int, noise: float, seed: int = 0) -> torch.Tensor:
    """A TT-rank-`rank` tensor plus relative Gaussian noise."""
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    cores = [randn(ranks[k], n, ranks[k + 1], seed=seed + k) for k, n in enumerate(shape)]
    t = tt_to_tensor(cores)
    e = randn(*shape, seed=seed + 99)
    return t + noise * e * t.norm() / e.norm()


@pytest.fixture
def tl():
    tensorly = pytest.importorskip("tensorly")
    prev = tensorly.get_backend()
    tensorly.set_backend("pytorch")
    yield tensorly
    tensorly.set_backend(prev)


# ---------------------------------------------------------------- exact at full rank
T4 = randn(4, 5, 6, 3, seed=1)


@pytest.mark.parametrize("method", ["auto", "svd", "gram"])
def test_tt_exact_full_rank(method):
    cores = tt_svd(T4, method=method)
    assert [tuple(c.shape) for c in cores] == [(1, 4, 4), (4, 5, 18), (18, 6, 3), (3, 3, 1)]
    assert rel(tt_to_tensor(cores), T4) < 1e-10


def test_tt_matrix_exact_full_rank_and_layout():
    w = randn(12, 20, seed=2)
    cores = tt_matrix_svd(w, (3, 4), (4, 5), ranks=None)
    assert [tuple(c.shape) for c in cores] == [(1, 3, 4, 12), (12, 4, 5, 1)]
    assert rel(tt_matrix_to_matrix(cores), w) < 1e-10
    # layout: W[(o1, o2), (i1, i2)] = sum_a G1[0, o1, i1, a] G2[a, o2, i2, 0]
    ref = torch.einsum("xia,ayjb->xyij", cores[0][0], cores[1])
    assert torch.allclose(ref.reshape(12, 20), w)


@pytest.mark.parametrize("ranks", [[1, 4, 30, 18], [2, 2, 30, 18], 100])
def test_tr_exact_full_rank(ranks):
    cores = tr_svd(T4, ranks)
    assert cores[0].shape[0] == cores[-1].shape[-1]
    assert rel(tr_to_tensor(cores), T4) < 1e-10


def test_ht_exact_full_rank_and_structure():
    t = randn(3, 4, 2, 5, 3, seed=3)
    ht = ht_svd(t, 1000)
    assert rel(ht_to_tensor(ht), t) < 1e-10
    assert ht.tree == ht_tree(5)
    assert ht.tree[(0, 1, 2, 3, 4)] == ((0, 1), (2, 3, 4))
    assert ht.transfers[ht.root].shape[-1] == 1
    for node, (left, right) in ht.tree.items():
        assert ht.transfers[node].shape[:2] == (ht.ranks[left], ht.ranks[right])
    assert [tuple(u.shape) for u in ht.leaves] == [(n, n) for n in t.shape]


def test_tucker_exact_full_rank():
    core, factors = hosvd(T4, list(T4.shape))
    assert rel(tucker_to_tensor(core, factors), T4) < 1e-10
    core, factors = hosvd(T4, [4, 6], modes=[0, 2], n_iter=2)
    assert core.shape == T4.shape
    assert rel(tucker_to_tensor(core, factors, modes=[0, 2]), T4) < 1e-10
    for f in factors:
        assert torch.allclose(f.mT @ f, torch.eye(f.shape[1], dtype=f.dtype), atol=1e-12)


def test_kronecker_exact_full_rank():
    a, b = kronecker_svd(T4, (2, 5, 3, 1), (2, 1, 2, 3), rank=1000)
    assert a.shape == (12, 2, 5, 3, 1) and b.shape == (12, 2, 1, 2, 3)
    assert rel(kron_to_tensor(a, b), T4) < 1e-10


# ---------------------------------------------------------------- parity with tensorly
INPUTS = {
    "random": lambda: randn(6, 7, 8, 5, seed=4),
    "lowrank+noise": lambda: low_rank_tt((6, 7, 8, 5), 3, 0.05, seed=5),
}


@pytest.mark.parametrize("kind", INPUTS)
def test_tt_matches_tensorly(tl, kind):
    from tensorly.decomposition import tensor_train

    t = INPUTS[kind]()
    for r in (2, 4):
        ours = rel(tt_to_tensor(tt_svd(t, r)), t)
        theirs = rel(tl.tt_to_tensor(tensor_train(t, [1, r, r, r, 1])), t)
        assert ours <= 1.01 * theirs


def test_tt_matrix_matches_tensorly(tl):
    from tensorly.decomposition import tensor_train_matrix

    w = randn(24, 30, seed=6)
    ours = rel(tt_matrix_to_matrix(tt_matrix_svd(w, (4, 6), (5, 6), 5)), w)
    tensorized = w.reshape(4, 6, 5, 6)
    theirs = tl.tt_matrix_to_tensor(tensor_train_matrix(tensorized, [1, 5, 1]))
    assert ours <= 1.01 * rel(theirs, tensorized)


@pytest.mark.parametrize("kind", INPUTS)
def test_tucker_matches_tensorly(tl, kind):
    from tensorly.decomposition import partial_tucker, tucker

    t = INPUTS[kind]()
    ranks = (3, 4, 3, 2)
    core, factors = hosvd(t, ranks, n_iter=10)
    theirs = tl.tucker_to_tensor(tucker(t, ranks))
    assert rel(tucker_to_tensor(core, factors), t) <= 1.01 * rel(theirs, t)
    core, factors = hosvd(t, ranks, n_iter=0)
    theirs = tl.tucker_to_tensor(tucker(t, ranks, n_iter_max=0))
    assert rel(tucker_to_tensor(core, factors), t) <= 1.01 * rel(theirs, t)
    core, factors = hosvd(t, (3, 4), modes=(0, 1), n_iter=10)
    (tcore, tfactors), _ = partial_tucker(t, (3, 4), modes=[0, 1])
    theirs = tl.tenalg.multi_mode_dot(tcore, tfactors, modes=[0, 1])
    assert rel(tucker_to_tensor(core, factors, (0, 1)), t) <= 1.01 * rel(theirs, t)


def test_cp_matches_tensorly(tl):
    from tensorly.decomposition import parafac

    w = [randn(n, 3, seed=10 + k) for k, n in enumerate((6, 7, 8))]
    t = cp_to_tensor(torch.ones(3, dtype=torch.float64), w)
    t = t + 0.05 * randn(6, 7, 8, seed=20) * t.norm() / math.sqrt(t.numel())
    for r in (2, 3):
        weights, factors = cp_als(t, r, n_iter=200)
        theirs = tl.cp_to_tensor(parafac(t, r, n_iter_max=200, init="svd"))
        assert rel(cp_to_tensor(weights, factors), t) <= 1.01 * rel(theirs, t)


# ---------------------------------------------------------------- tolerances
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tol", [0.5, 0.1, 0.01])
def test_tt_tol_honoured(dtype, tol):
    for t in (randn(6, 7, 8, 5, seed=7, dtype=dtype), low_rank_tt((6, 7, 8, 5), 3, 0.001, seed=8).to(dtype)):
        cores = tt_svd(t, tol=tol)
        assert rel(tt_to_tensor(cores), t) <= tol * (1 + 1e-4)
        capped = tt_svd(t, ranks=2, tol=tol)
        assert max(c.shape[-1] for c in capped) <= 2


def test_tt_matrix_and_truncated_svd_tol_honoured():
    w = low_rank_tt((16, 20), 4, 0.02, seed=9)
    for tol in (0.3, 0.05, 1e-3):
        assert rel(tt_matrix_to_matrix(tt_matrix_svd(w, (4, 4), (4, 5), tol=tol)), w) <= tol
        for method in ("auto", "svd", "gram"):
            u, s, vh = truncated_svd(w, tol=tol, method=method)
            assert rel(u @ torch.diag(s) @ vh, w) <= tol * (1 + 1e-6)


def test_rank_for_tol():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    norm = float(s.norm())
    assert rank_for_tol(s, 1e-6) == 4
    assert rank_for_tol(s, 0.5 / norm) == 3
    assert rank_for_tol(s, math.sqrt(1.25) / norm) == 2
    assert rank_for_tol(s, 1.0) == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_path_matches_svd(dtype):
    """'auto' takes the Gram path where it is safe and falls back where it is not."""
    m = randn(40, 3000, seed=11, dtype=dtype)
    for method in ("gram", "auto"):
        u, rest, _ = left_factor(m, 10, method=method)
        us, rests, _ = left_factor(m, 10, method="svd")
        assert abs(rel(u @ rest, m) - rel(us @ rests, m)) < 1e-5
    # singular values 1 .. 1e-6: in float32 the Gram matrix cannot see the small ones
    q1, _ = torch.linalg.qr(randn(60, 8, seed=12))
    q2, _ = torch.linalg.qr(randn(500, 8, seed=13))
    s = torch.logspace(0, -6, 8, dtype=torch.float64)
    ill = ((q1 * s) @ q2.mT).to(dtype)
    u, st, vh = truncated_svd(ill, 7)
    best = float(s[7] / s.norm())
    assert rel(u @ torch.diag(st) @ vh, ill) < best * 1.05 + 10 * torch.finfo(dtype).eps


# ---------------------------------------------------------------- TR and HT specifics
def test_tr_als_never_worse_and_ring_ranks():
    t = randn(10, 6, 7, 4, seed=14)
    base = tr_svd(t, 3)
    better = tr_svd(t, 3, n_als=3)
    assert [c.shape for c in base] == [c.shape for c in better]
    assert [tuple(c.shape) for c in better] == [(3, 10, 3), (3, 6, 3), (3, 7, 3), (3, 4, 3)]
    assert rel(tr_to_tensor(better), t) <= rel(tr_to_tensor(base), t) + 1e-12
    # r_0 * r_1 = 9 does not fit a first mode of 5: r_0 drops to floor(sqrt(5)) = 2, r_1 to 2
    thin = tr_svd(t[:5], 3)
    assert thin[0].shape == (2, 5, 2) and thin[-1].shape[-1] == 2


def test_ht_ranks_per_node_and_quasi_optimal():
    t = low_rank_tt((4, 5, 6, 3), 2, 0.01, seed=15)
    ht = ht_svd(t, {(0,): 2, (0, 1): 3})
    assert ht.leaves[0].shape == (4, 2) and ht.ranks[(0, 1)] == 3 and ht.ranks[(2, 3)] == 18
    assert rel(ht_to_tensor(ht), t) < 0.05


# ---------------------------------------------------------------- Kronecker
def test_kronecker_recovers_exact_sum():
    a = randn(3, 4, 2, 3, 1, seed=16)
    b = randn(3, 2, 5, 1, 3, seed=17)
    t = sum(torch.kron(a[r], b[r]) for r in range(3))
    assert rel(kron_to_tensor(a, b), t) < 1e-12
    a2, b2 = kronecker_svd(t, (4, 2, 3, 1), (2, 5, 1, 3), rank=3)
    assert rel(kron_to_tensor(a2, b2), t) < 1e-10
    assert torch.allclose(b2.reshape(3, -1).norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_kronecker_error_is_svd_tail():
    a1, b1, a2, b2 = 4, 3, 5, 2
    w = randn(a1 * b1, a2 * b2, seed=18)
    # Van Loan-Pitsianis by hand: one row per (i1, i2) block, C-order, each block flattened
    blocks = [w[i * b1 : (i + 1) * b1, j * b2 : (j + 1) * b2].reshape(-1) for i in range(a1) for j in range(a2)]
    s = torch.linalg.svdvals(torch.stack(blocks))
    for r in (1, 2, 4):
        a, b = kronecker_svd(w, (a1, a2), (b1, b2), r)
        err = float(torch.linalg.vector_norm(kron_to_tensor(a, b) - w))
        assert err == pytest.approx(float(s[r:].norm()), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- CP
def test_cp_recovers_low_rank():
    w = [randn(n, 3, seed=30 + k) for k, n in enumerate((5, 6, 7, 4))]
    t = cp_to_tensor(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), w)
    weights, factors = cp_als(t, 3, n_iter=500, tol=1e-14)
    assert rel(cp_to_tensor(weights, factors), t) < 1e-6
    assert torch.all(weights[:-1] >= weights[1:])
    for f in factors:
        assert torch.allclose(f.norm(dim=0), torch.ones(3, dtype=torch.float64))


def test_cp_warns_on_degenerate_fit():
    # rank 3, border rank 2: the best rank-2 approximation does not exist
    a, b = randn(4, seed=40), randn(4, seed=41)
    t = sum(torch.einsum("i,j,k->ijk", x, y, z) for x, y, z in ((a, a, b), (a, b, a), (b, a, a)))
    with pytest.warns(RuntimeWarning, match="rank-2 fit looks degenerate"):
        cp_als(t, 2, n_iter=500, tol=1e-14, init="random", seed=0)


def test_cp_no_warning_when_fine():
    w = [randn(n, 2, seed=50 + k) for k, n in enumerate((5, 6, 7))]
    t = cp_to_tensor(torch.ones(2, dtype=torch.float64), w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cp_als(t, 2)


# ---------------------------------------------------------------- dtypes and devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtype_device_preserved(device, dtype):
    t = randn(4, 5, 6, seed=60).to(device=device, dtype=dtype)
    for c in tt_svd(t, 3):
        assert c.dtype == dtype and c.device.type == device
    core, factors = hosvd(t, 2)
    assert core.dtype == dtype and factors[0].device.type == device
    a, b = kronecker_svd(t, (2, 5, 3), (2, 1, 2), 2)
    assert a.dtype == dtype and b.device.type == device


# ---------------------------------------------------------------- bad input
BAD = [
    (lambda: tt_svd(torch.tensor([[1.0, float("nan")]]), 2), "tensor contains NaN"),
    (lambda: tt_svd(torch.tensor([[1.0, float("inf")]]), 2), "tensor contains inf"),
    (lambda: tt_svd(torch.ones(3, 3, dtype=torch.int64), 2), "floating or complex dtype"),
    (lambda: tt_svd(T4, 0), r"ranks must be >= 1, got 0"),
    (lambda: tt_svd(T4, [2, -1, 2]), r"ranks\[1\] must be >= 1, got -1"),
    (lambda: tt_svd(T4, [2, 2]), "ranks must have 3 or 5"),
    (lambda: tt_svd(T4, [2, 2, 2, 2, 2]), "boundary ranks r_0 and r_d must be 1"),
    (lambda: tt_svd(T4, 2, tol=0.0), "tol must be a finite number > 0, got 0.0"),
    (lambda: tt_svd(T4, 2, tol=-1), "tol must be a finite number > 0, got -1"),
    (lambda: tt_svd(T4, 2, method="qr"), "method must be one of"),
    (lambda: truncated_svd(T4, 2), "matrix must be 2-D"),
    (
        lambda: tt_matrix_svd(randn(12, 20), (3, 5), (4, 5), 2),
        r"out_modes \(3, 5\) multiply to 15, but the matrix has 12 rows",
    ),
    (lambda: tr_svd(T4, [2, 2, 2]), "ranks must have 4"),
    (lambda: tr_svd(T4, [2, 2, 2, 2, 3]), "r_d == r_0"),
    (lambda: ht_svd(T4, {(0, 2): 2}), r"nodes \[\(0, 2\)\] that are not in the dimension tree"),
    (lambda: ht_svd(randn(5), 2), "at least 2 modes"),
    (lambda: hosvd(T4, (2, 2), modes=(0, 0)), "modes must not repeat"),
    (lambda: hosvd(T4, (2, 2, 2)), "one entry per decomposed mode"),
    (lambda: cp_als(T4, 0), "rank must be >= 1, got 0"),
    (
        lambda: kronecker_svd(T4, (2, 5, 3, 1), (2, 1, 3, 3), 2),
        r"a_shape\[2\] \* b_shape\[2\] must equal tensor.shape\[2\], got 3 \* 3 = 9 != 6",
    ),
    (lambda: kronecker_svd(T4, (2, 5), (2, 1), 2), "one size per tensor mode"),
    (lambda: tt_to_tensor([randn(2, 3, 2), randn(2, 3, 2)]), "boundary ranks must be 1"),
    (lambda: tt_to_tensor([randn(1, 3, 2), randn(3, 3, 1)]), "sizes must match, got 2 and 3"),
]


@pytest.mark.parametrize("call,match", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises(call, match):
    with pytest.raises(AdtnError, match=match):
        call()


def test_rank_errors_are_rank_errors():
    with pytest.raises(RankError):
        hosvd(T4, 0)
    with pytest.raises(RankError):
        rank_for_tol(torch.ones(3), 0)


def test_complex_exact_full_rank():
    t = torch.complex(randn(4, 5, 6, seed=70), randn(4, 5, 6, seed=71))
    assert rel(tt_to_tensor(tt_svd(t, method="gram")), t) < 1e-10
    assert rel(ht_to_tensor(ht_svd(t, 100)), t) < 1e-10
    core, factors = hosvd(t, 100)
    assert rel(tucker_to_tensor(core, factors), t) < 1e-10
