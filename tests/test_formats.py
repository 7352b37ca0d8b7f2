"""Formats own their knowledge: the ``Format`` fields, no template name outside ``adtn/templates/``,
and a toy format registered from one file that encode / compress / report / the shape search run."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import adtn
from adtn.errors import TemplateError
from adtn.templates import TEMPLATES, Format, Template, get, names, policy_members, register, unregister

ROOT = Path(adtn.__file__).resolve().parent


# ---------------------------------------------------------------------- no template names outside their folders
def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of the module, classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _named(value: object, templates: set[str], prefixes: set[str]) -> bool:
    return isinstance(value, str) and (value in templates or value in prefixes)


def template_names_used(source: str, templates: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, where) of each template name in a comparison, a branch test, a container or
    a ``startswith`` / ``endswith`` call of ``source``; docstrings, defaults and messages are usage."""
    prefixes = {n.split("_")[0] + "_" for n in templates if "_" in n}
    tree = ast.parse(source)
    docs = _docstrings(tree)
    hits: dict[int, tuple[int, str, str]] = {}

    def scan(node: ast.AST, where: str) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and id(sub) not in docs and _named(sub.value, templates, prefixes):
                hits.setdefault(id(sub), (sub.lineno, sub.value, where))

    branches = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            scan(node, "comparison")
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            branches.append(node.test)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for elt in node.elts:
                if isinstance(elt, ast.Constant):
                    scan(elt, "container")
        elif isinstance(node, ast.Dict):
            for part in [*node.keys, *node.values]:
                if isinstance(part, ast.Constant):
                    scan(part, "container")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith")):
            for arg in node.args:
                scan(arg, "prefix test")
    for test in branches:  # a name in a branch test not already counted as a comparison or prefix test
        scan(test, "branch")
    return sorted(set(hits.values()))


def test_the_scanner_finds_names_in_branches_and_not_in_docs_or_defaults():
    source = textwrap.dedent('''
        """Docs may say "tt"."""
        def f(template="tt", x=None):
            """Usage: f("cp")."""
            if template == "cp" or template.startswith("semi_"):
                return ("tucker2", "kronecker")
            return {"ht": 1}.get(template, g("tr"))
    ''')
    found = {(name, where) for _, name, where in template_names_used(source, set(names()))}
    assert found == {("cp", "comparison"), ("semi_", "prefix test"), ("tucker2", "container"),
                     ("kronecker", "container"), ("ht", "container")}


def test_no_module_outside_the_templates_names_a_template():
    templates = set(names())
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "templates":
            continue
        for line, name, where in template_names_used(path.read_text(), templates):
            bad.append(f"adtn/{rel}:{line}: {name!r} in a {where}")
    assert not bad, "template names outside adtn/templates/ (ask the Format instead):\n" + "\n".join(bad)


# ---------------------------------------------------------------------- the Format fields
def test_format_fields_of_the_built_in_formats():
    tt, kron, adtn_t = get("tt"), get("kronecker"), get("adtn")
    assert Template is Format and isinstance(tt, Format)
    assert tt.knob == "rank" and adtn_t.knob == "depth" and get("cp").knob == "rank"
    assert set(tt.shape_options) == {"modes", "d", "kernel_with"} and kron.shape_options == ("factors",)
    assert tt.clip and not get("cp").clip
    assert tt.count is tt.formula and tt.decompose is tt.init and tt.formula is not None
    assert {n for n in names() if get(n).searchable} == {"tt", "tr", "ht", "semi_tt", "semi_tr", "kronecker"}
    assert {n for n in names() if get(n).estimated} == {"tr", "semi_tr"}
    assert get("semi_tt").t_in_modes == -1 and get("semi_tr").t_in_modes == 0 and tt.t_in_modes is None
    assert kron.alternatives is not None and tt.alternatives is None
    splits = list(kron.alternatives({"out": 16, "in": 16}, 40.0, 0.9))
    assert splits and all(set(s) == {"factors"} for s in splits)
    assert {n: get(n).conv_form.name for n in names() if get(n).conv_form is not None} == {
        "tucker": "tucker2", "tucker2": "tucker2", "cp": "cp", "kronecker": "kronecker"}
    assert all(get(n).example is not None for n in names())
    assert all(get(n).calibrated is None for n in names())  # all use the generic data-aware decompose


def test_policies_are_declared_by_the_formats():
    assert policy_members("hybrid", "linear") == ["ht"] and policy_members("hybrid", "conv") == ["tt"]
    assert policy_members("mixed", "conv") == ["tucker2", "cp"]
    auto = policy_members("auto", "conv")
    assert "adtn" not in auto and not any(n.startswith("semi_") for n in auto) and {"tt", "cp", "tucker2"} <= set(auto)
    assert policy_members("auto_always", "linear") == ["cp"] and policy_members("auto_always", "conv") == []
    assert get("tt").joins("hybrid", "conv") and not get("tt").joins("hybrid", "linear")


def test_forced_says_when_the_options_fix_the_shape():
    tt = get("tt")
    assert tt.forced({"d": 3}) and tt.forced({}, modes=((4, 4), (4, 4))) and tt.forced({"kernel_with": 1})
    assert not tt.forced({"rank": 3, "d": None}) and not get("cp").forced({"rank": 3})


def test_register_rejects_unknown_fields_and_bad_policies():
    with pytest.raises(TemplateError, match=r"unknown Format fields \['colour'\]"):
        register("_bad", colour="red")
    with pytest.raises(TemplateError, match=r"policies\['auto'\] must be a tuple of layer kinds"):
        register("_bad", policies={"auto": ("everything",)})(get("tt").build)
    assert "_bad" not in TEMPLATES


def test_unregister_removes_and_a_miss_lists_the_valid_names():
    register("_gone", formula=get("cp").formula)(get("cp").build)
    assert unregister("_gone").name == "_gone" and "_gone" not in names()
    with pytest.raises(TemplateError, match=r"template '_gone' not found; valid: \["):
        unregister("_gone")


# ---------------------------------------------------------------------- a toy format from one file
TOY = '''
"""toy_lowrank: W = U V, U (out, r), V (r, in[, kh, kw]); a conv runs as V's kh x kw conv to r channels then U's 1x1."""

import math

import torch
import torch.nn.functional as F

from adtn.graph import TensorGraph
from adtn.templates import register

NAME = "toy_lowrank"


def count(axes, *, rank):
    rest = math.prod(list(axes.values())[1:])
    return rank * (list(axes.values())[0] + rest)


def decompose(dense, axes, *, rank=None, tol=None, **options):
    out = dense.shape[0]
    u, s, vh = torch.linalg.svd(dense.reshape(out, -1), full_matrices=False)
    if rank is None:
        tail = (s.flip(0) ** 2).cumsum(0).flip(0).sqrt() / s.norm()
        rank = int(sum(1 for k in range(len(s)) if tail[k] > tol)) or 1
    root = s[:rank].sqrt()
    graph = build(axes, rank=rank)
    return graph, {"u": u[:, :rank] * root, "v": (root[:, None] * vh[:rank]).reshape((rank,) + tuple(dense.shape[1:]))}


class Form:
    name = "toy_two_convs"
    before_low_rank = True  # the network is U V: the generic low-rank form would apply too

    def applies(self, layer):
        return {"u", "v"} <= set(layer.tn_params)

    def cost(self, layer, n, h, w):
        from adtn.conv_ops import tucker_cost

        r = layer.tn_params["u"].shape[1]
        return tucker_cost(n, h, w, (r, layer.in_channels) + layer.geometry.kernel, None, layer.out_channels,
                           layer.geometry)

    def run(self, layer, x):
        p = layer.tn_params
        z = F.conv2d(x, layer.as_2d(p["v"], 2), None, **layer.geometry.args)
        return F.conv2d(z, p["u"][:, :, None, None], layer.bias)


def candidates(ctx):
    out = list(ctx.axes.values())[0]
    cap = min(out, ctx.dense // out)
    r = ctx.largest(lambda r: count(ctx.axes, rank=r), cap)
    return [ctx.Candidate({}, dict(ctx.axes), r, count(ctx.axes, rank=r), ((ctx.svd_key(), r),), "svd")] if r else []


@register(NAME, formula=count, init=decompose, conv_form=Form(), candidates=candidates,
          policies={"auto": ("linear", "conv")}, example=({"out": 12, "in": 10}, {"rank": 3}))
def build(axes, *, rank):
    """A rank-r product U V."""
    names = list(axes)
    g = TensorGraph("toy")
    g.add_node("u", legs={"o": axes[names[0]], "r": rank})
    g.add_node("v", legs={"r": rank, **{f"i{k}": axes[ax] for k, ax in enumerate(names[1:])}})
    g.bond("u.r", "v.r")
    return g.set_outputs({names[0]: ["u.o"], **{ax: [f"v.i{k}"] for k, ax in enumerate(names[1:])}}).freeze()
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_lowrank_format.py"
    path.write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_lowrank_format", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)  # registers the format
        yield module.NAME
    finally:
        if "toy_lowrank" in TEMPLATES:
            unregister("toy_lowrank")
        sys.modules.pop(spec.name, None)
    assert "toy_lowrank" not in names()


def test_a_toy_format_from_one_file_runs_everywhere(toy):
    torch.manual_seed(0)
    fmt = get(toy)
    assert fmt.knob == "rank" and fmt.searchable and fmt.joins("auto", "conv") and toy in adtn.shapes.searchable()

    lin = nn.Linear(20, 12)
    layer = adtn.encode(lin, toy, rank=12, init="decompose")  # full rank: exact
    torch.testing.assert_close(layer.weight, lin.weight, atol=1e-5, rtol=1e-4)
    assert layer.num_tn_params == fmt.formula({"out": 12, "in": 20}, rank=12)

    conv = nn.Conv2d(6, 10, 3, padding=1)
    c = adtn.encode(conv, toy, rank=4, forward="direct")
    x = torch.randn(2, 6, 9, 9)
    assert c.choose_forward(tuple(x.shape)).form == "toy_two_convs"
    assert c.flops(tuple(x.shape))[1] == "toy_two_convs"
    dense = torch.nn.functional.conv2d(x, c.dense_weight(), c.bias, padding=1)
    torch.testing.assert_close(c(x), dense, atol=1e-5, rtol=1e-4)

    # the shape search uses the toy's candidates: budget= alone picks its SVD shape
    searched = adtn.encode(nn.Linear(32, 16), toy, budget=0.3)
    assert searched.shape_choice is not None and searched.shape_choice.template == toy
    assert searched.shape_choice.tag == "svd" and searched.num_tn_params <= 0.3 * 32 * 16
    choice = adtn.shapes.search(toy, conv.weight, {"out": 10, "in": 6, "kh": 3, "kw": 3}, budget=0.5)
    assert choice.template == toy and choice.rank >= 1

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    compressed, report = adtn.compress(model, policy=toy, budget=0.3, forward="direct")
    assert [r.template for r in report.rows] == [toy, toy]
    assert 0.15 <= report.fraction <= 0.33
    out = compressed(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 10)
    rep = adtn.Report.from_model(compressed, input_shape=(2, 3, 6, 6))
    assert toy in str(rep) and toy in str(report) and rep.rows[0].forward == "direct/toy_two_convs"
    _, auto = adtn.compress(model, policy="auto", budget=0.3, candidates=(toy, "tt"))
    assert all(toy in r.candidates for r in auto.rows)


@pytest.mark.parametrize("policy", ["cp", "tt", "kronecker", "hybrid", "mixed", "auto"])
def test_a_misspelt_option_is_named_by_compress_for_every_policy(policy):
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.raises(TemplateError, match=r"unknown option\(s\) \['rnak'\].*valid: .*'rank'"):
        adtn.compress(model, policy, budget=0.5, rnak=3)


@pytest.mark.parametrize("template", ["cp", "tt", "tucker2", "adtn"])
def test_a_misspelt_option_is_named_by_encode(template):
    with pytest.raises(TemplateError, match=rf"TNLinear.encode: unknown option\(s\) \['rnak'\] for {template}"):
        adtn.encode(nn.Linear(16, 16), template, rank=2 if template != "adtn" else None, rnak=3)
