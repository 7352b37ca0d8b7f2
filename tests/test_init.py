"""Template initialisers: every template with ``init`` decomposes a dense weight exactly at full
rank, matches tensorly's error at equal ranks, honours ``tol``, and rejects bad input clearly."""

import math
import warnings

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker, tensor_train, tensor_train_matrix, tucker

import adtn
from adtn.decompose import tt_matrix_svd
from adtn.errors import RankError, ShapeError
from adtn.templates import TEMPLATES, get
from adtn.templates.init_common import contract, shrink
from adtn.templates.kronecker import default_factors
from adtn.testing import devices, rel_error

LIN = {"out": 32, "in": 24}
CONV = {"out": 16, "in": 8, "kh": 3, "kw": 3}
WITH_INIT = sorted(n for n, t in TEMPLATES.items() if t.init is not None)
F64 = torch.float64


def kron_full(axes):
    a, b = default_factors(axes)
    return min(math.prod(a.values()), math.prod(b.values()))


# (template, axes, build options at which the decomposition is exact)
FULL = [
    ("tt", LIN, {"rank": 10**6, "clip": True}),
    ("tt", CONV, {"rank": 10**6, "clip": True}),
    ("tr", {"out": 16, "in": 16}, {"rank": 4, "modes": ((4, 4), (4, 4))}),  # r_0 r_1 = 16 = first mode
    ("tr", CONV, {"rank": [3, 24, 3], "modes": ((4, 4), (4, 2))}),  # spatial 9 = 3 x 3 first
    ("ht", LIN, {"rank": 10**6, "clip": True}),
    ("ht", CONV, {"rank": 10**6, "clip": True}),
    ("ht", {"out": 16, "in": 16, "kh": 3, "kw": 3}, {"rank": 10**6, "clip": True, "d": 4}),  # 5 leaves
    ("tucker", LIN, {"rank": [32, 24]}),
    ("tucker", CONV, {"rank": [16, 8, 3, 3]}),
    ("tucker2", LIN, {"rank": (32, 24)}),
    ("tucker2", CONV, {"rank": (16, 8)}),
    ("kronecker", LIN, {"rank": kron_full(LIN)}),
    ("kronecker", CONV, {"rank": kron_full(CONV)}),
    ("cp", LIN, {"rank": 24}),
    ("semi_tt", {"out": 64, "in": 64}, {"rank": 10**6, "clip": True, "d": 2}),
    ("semi_tr", {"out": 64, "in": 64}, {"rank": 16, "d": 2}),
    ("semi_tucker", LIN, {"rank": [32, 24]}),
    ("semi_tucker", CONV, {"rank": [16, 8], "compress": ("out", "in")}),
]
# a small rank per template, for low-rank targets and tol (nominal ranks divisible by t = 2)
LOW = {"tt": 3, "tr": 3, "ht": 3, "tucker": 3, "tucker2": 3, "kronecker": 3, "cp": 3, "semi_tt": 4, "semi_tr": 4,
       "semi_tucker": 4}
# a weight shape per template that its defaults accept (semi-tensor sizes divisible by t = 2)
AXES = {name: CONV for name in LOW} | {"semi_tt": {"out": 64, "in": 64}, "semi_tr": {"out": 64, "in": 64},
                                       "semi_tucker": LIN, "ht": {"out": 64, "in": 64}}


def weight(axes, seed=0):
    return torch.randn(*axes.values(), dtype=F64, generator=torch.Generator().manual_seed(seed))


def low_rank(name, axes, rank, noise, seed=0, **options):
    """A weight the template represents at ``rank``, plus Gaussian noise of relative size ``noise``."""
    m = adtn.compile(get(name).build(axes, rank=rank, **options), dtype=F64, seed=seed)
    w = m.dense().detach()
    e = weight(axes, seed + 1)
    return w + noise * e * (w.norm() / e.norm())


def init_error(name, w, axes, **options):
    graph, tensors = get(name).init(w, axes, **options)
    return rel_error(contract(graph, tensors), w), graph


@pytest.fixture
def torch_backend():
    tl.set_backend("pytorch")
    yield
    tl.set_backend("numpy")


def test_every_decomposable_template_has_an_initialiser():
    assert set(LOW) <= set(WITH_INIT)
    assert {name for name, _, _ in FULL} == set(LOW)


# ---------------------------------------------------------------------------- exactness, compile path
@pytest.mark.parametrize("name, axes, options", FULL, ids=lambda v: v if isinstance(v, str) else None)
def test_exact_at_full_rank(name, axes, options):
    w = weight(axes)
    err, graph = init_error(name, w, axes, **options)
    assert err < 1e-10
    assert graph.structure_hash() == get(name).build(axes, **options).structure_hash()
    m = adtn.compile(get(name).build(axes, **options), init=w, dtype=F64)
    assert rel_error(m.dense().detach(), w) < 1e-10


@pytest.mark.parametrize("name", WITH_INIT)
def test_compile_with_a_weight_uses_the_initialiser(name):
    axes = AXES[name]
    w = weight(axes)
    graph = get(name).build(axes, rank=LOW[name])
    m = adtn.compile(graph, init=w, dtype=F64)
    _, tensors = get(name).init(w, axes, rank=LOW[name])
    for node, t in tensors.items():
        torch.testing.assert_close(m.params[node].detach(), t, rtol=0, atol=1e-12)


def test_compile_gives_the_tt_svd_cores_exactly():
    w = weight({"out": 64, "in": 64})
    m = adtn.compile(get("tt").build({"out": 64, "in": 64}, rank=8), init=w, dtype=F64)
    cores = tt_matrix_svd(w, (8, 8), (8, 8), ranks=8)
    assert torch.equal(m.params["core0"].detach(), cores[0][0])
    assert torch.equal(m.params["core1"].detach(), cores[1][..., 0])


def test_tol_graph_and_tensors_compile():
    axes = {"out": 64, "in": 64}
    w = low_rank("tt", axes, 5, 0.01)
    graph, tensors = get("tt").init(w, axes, tol=0.1)
    m = adtn.compile(graph, init=tensors, dtype=F64)
    assert rel_error(m.dense().detach(), w) <= 0.1
    assert graph.meta["template"]["options"]["rank"] == [5]


# ---------------------------------------------------------------------------- against tensorly
def lin_tt(w, r):
    t = tl.tensor(w.reshape(8, 4, 6, 4))  # out (8, 4), in (6, 4)
    return tl.tt_matrix_to_tensor(tensor_train_matrix(t, [1, r, 1])).reshape(w.shape)


def conv_tt(w, r):
    t = w.reshape(4, 4, 4, 2, 3, 3).permute(4, 5, 0, 2, 1, 3).reshape(9, 16, 8)  # spatial, (o0 i0), (o1 i1)
    approx = tl.tt_to_tensor(tensor_train(t, [1, r, r, 1])).reshape(3, 3, 4, 4, 4, 2)
    return approx.permute(2, 4, 3, 5, 0, 1).reshape(w.shape)


def hosvd_tl(w, r, n_iter):
    return tl.tucker_to_tensor(tucker(w, rank=[r] * w.dim(), n_iter_max=n_iter, init="svd", tol=0))


def tucker2_tl(w, r, n_iter):
    (core, factors), _ = partial_tucker(w, rank=[r, r], modes=[0, 1], n_iter_max=n_iter, init="svd", tol=0)
    return tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])


def cp_tl(w, r):
    return tl.cp_to_tensor(parafac(w, r, n_iter_max=100, init="svd", tol=1e-8))


TL_CASES = [
    ("tt", LIN, {"modes": ((8, 4), (6, 4))}, lin_tt),
    ("tt", CONV, {"modes": ((4, 4), (4, 2))}, conv_tt),
    ("tucker", CONV, {}, lambda w, r: hosvd_tl(w, r, 0)),
    ("tucker", CONV, {"n_iter": 10}, lambda w, r: hosvd_tl(w, r, 10)),
    ("tucker2", CONV, {}, lambda w, r: tucker2_tl(w, r, 0)),
    ("tucker2", CONV, {"n_iter": 10}, lambda w, r: tucker2_tl(w, r, 10)),
    ("cp", CONV, {}, cp_tl),
]


@pytest.mark.parametrize("kind", ["random", "low_rank"])
@pytest.mark.parametrize("name, axes, options, theirs", TL_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_error_within_one_percent_of_tensorly(torch_backend, kind, name, axes, options, theirs):
    r = LOW[name]
    build = {k: v for k, v in options.items() if k != "n_iter"}
    w = weight(axes) if kind == "random" else low_rank(name, axes, r, 0.05, seed=2, **build)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, _ = init_error(name, w, axes, rank=r, **options)
        ref = rel_error(theirs(w, r), w)
    assert ours <= 1.01 * ref + 1e-12, (ours, ref)


# ---------------------------------------------------------------------------- tol
@pytest.mark.parametrize("name", WITH_INIT)
def test_tol_is_reached_without_excess_rank(name):
    axes = AXES[name]
    w = low_rank(name, axes, LOW[name], 1e-3, seed=3)
    err, graph = init_error(name, w, axes, tol=0.02)
    assert err <= 0.02
    assert graph.num_params <= get(name).build(axes, rank=LOW[name]).num_params


@pytest.mark.parametrize("name", WITH_INIT)
@pytest.mark.parametrize("tol", [0.5, 0.1])
def test_tol_on_a_random_weight(name, tol):
    axes = AXES[name]
    if name == "cp" and tol < 0.5:
        axes = {"out": 16, "in": 12}  # matrix: the SVD gives the exact CP rank
    err, _ = init_error(name, weight(axes, 4), axes, tol=tol)
    assert err <= tol


def test_tol_ranks_per_bond_for_tt():
    axes = {"out": 64, "in": 64}
    w = low_rank("tt", axes, [2, 6], 1e-4, seed=5, d=3)
    err, graph = init_error("tt", w, axes, tol=1e-2, d=3)
    assert err <= 1e-2 and graph.meta["template"]["options"]["rank"] == [2, 6]


def test_tol_beyond_the_template_bounds_warns_with_the_error_reached():
    axes = {"out": 64, "in": 64}
    w = weight(axes, 6)
    with pytest.warns(RuntimeWarning, match=r"semi_tt init: tol=0.1 needs ranks above what the template allows.*"
                      r"the error is 0\.\d+"):
        graph, _ = get("semi_tt").init(w, axes, tol=0.1, d=3)
    largest = get("semi_tt").build(axes, rank=10**6, d=3, clip=True)  # the largest ranks the template allows
    assert graph.structure_hash() == largest.structure_hash()


# ---------------------------------------------------------------------------- padding, options
def test_rank_above_what_tr_svd_uses_is_zero_padded_and_exact():
    axes = {"out": 16, "in": 16}
    w = weight(axes)
    graph, tensors = get("tr").init(w, axes, rank=8, modes=((4, 4), (4, 4)))
    assert tensors["core0"].shape == (8, 4, 4, 8)
    assert rel_error(contract(graph, tensors), w) < 1e-10
    # every padded bond has one zero side and one trainable (non-zero) side
    assert tensors["core0"][..., 4:].abs().sum() == 0 and tensors["core1"][4:].abs().sum() > 0


def test_pad_and_shrink_keep_the_contraction():
    axes = {"out": 32, "in": 24}
    w = weight(axes)
    graph, tensors = get("tucker").init(w, axes, rank=[32, 5])  # HOSVD clips out's rank to 24: padded
    assert tensors["u_out"].shape == (32, 32)
    assert rel_error(contract(graph, tensors), w) == pytest.approx(init_error("tucker", w, axes, rank=[24, 5])[0])
    small = shrink(tensors, graph)  # the core (32, 5): r_out = 32 > 5 can shrink to 5
    assert small["u_out"].shape == (32, 5) and small["core"].shape == (5, 5)
    torch.testing.assert_close(small["u_out"] @ small["core"] @ small["u_in"].T, contract(graph, tensors))


def test_rank_dict_per_bond_for_chains():
    axes = {"out": 64, "in": 64}
    w = weight(axes)
    by_name, _ = get("tt").init(w, axes, rank={"core0.r -- core1.l": 3, "core1.r -- core2.l": 5}, d=3)
    by_index, _ = get("tt").init(w, axes, rank={0: 3, 1: 5}, d=3)
    assert by_name.meta["template"]["options"]["rank"] == by_index.meta["template"]["options"]["rank"] == [3, 5]
    with pytest.raises(RankError, match="unknown bond 'core0.r -- core9.l'"):
        get("tt").init(w, axes, rank={"core0.r -- core9.l": 3}, d=3)
    with pytest.raises(RankError, match="misses bonds"):
        get("tt").init(w, axes, rank={0: 3}, d=3)


def test_hooi_sweeps_never_hurt():
    w = weight(CONV)
    hosvd_err, _ = init_error("tucker", w, CONV, rank=3)
    hooi_err, _ = init_error("tucker", w, CONV, rank=3, n_iter=5)
    assert hooi_err <= hosvd_err + 1e-12


def test_cp_balances_the_weights_over_the_factors():
    _, tensors = get("cp").init(weight(CONV), CONV, rank=3)
    norms = torch.stack([t.norm(dim=0) for t in tensors.values()])
    assert torch.allclose(norms, norms[:1].expand_as(norms))


@pytest.mark.parametrize("name", WITH_INIT)
def test_a_zero_weight_needs_rank_one(name):
    axes = AXES[name]
    w = torch.zeros(*axes.values(), dtype=F64)
    graph, tensors = get(name).init(w, axes, tol=0.1)
    assert graph.num_params == get(name).build(axes, rank=2 if name.startswith("semi") else 1).num_params
    assert contract(graph, tensors).abs().max() == 0


def test_half_precision_weights_are_decomposed_in_float32():
    w = weight(CONV).half()
    graph, tensors = get("tucker2").init(w, CONV, rank=4)
    assert rel_error(contract(graph, tensors), w.double()) < 0.95


@pytest.mark.parametrize("device", devices())
def test_init_runs_on_the_weight_device(device):
    w = weight(CONV).to(device)
    for name in ("tt", "tucker2", "kronecker"):
        graph, tensors = get(name).init(w, CONV, tol=0.5)
        assert all(t.device.type == device for t in tensors.values())
        assert rel_error(contract(graph, tensors), w) <= 0.5


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", WITH_INIT)
def test_bad_input_is_rejected_clearly(name):
    init = get(name).init
    axes = CONV
    w = weight(axes)
    for bad, what in ((float("nan"), "NaN"), (float("inf"), "inf")):
        broken = w.clone()
        broken[0, 0, 0, 0] = bad
        with pytest.raises(ShapeError, match=f"{name} init: the weight contains {what}"):
            init(broken, axes, rank=2)
    with pytest.raises(ShapeError, match=r"the weight has shape \(16, 8, 9\), but axes"):
        init(w.reshape(16, 8, 9), axes, rank=2)
    with pytest.raises(RankError, match="must be a positive integer, got 0"):
        init(w, axes, rank=0)
    for tol in (0, -0.1, 1.0, float("nan")):
        with pytest.raises(RankError, match=r"tol is the relative Frobenius error to reach, a number in \(0, 1\)"):
            init(w, axes, tol=tol)
    with pytest.raises(RankError, match="give rank= or tol=, not both"):
        init(w, axes, rank=2, tol=0.1)
    with pytest.raises(RankError, match="give rank="):
        init(w, axes)
