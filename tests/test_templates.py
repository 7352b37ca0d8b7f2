"""Registry-wide checks: every registered template is tested the day it is registered."""

import pytest
import torch

import adtn
from adtn.errors import TemplateError
from adtn.graph import TensorGraph
from adtn.testing import TEMPLATE_EXAMPLES

NAMES = adtn.templates.names()


def example(name):
    return TEMPLATE_EXAMPLES.get(name, ({"out": 16, "in": 16}, {"rank": 2}))


def test_required_names_registered():
    required = {"tt", "tr", "ht", "tucker", "tucker2", "cp", "kronecker", "semi_tt", "semi_tr", "semi_tucker"}
    assert required <= set(NAMES)


def test_unknown_template_lists_valid_names():
    with pytest.raises(TemplateError, match=r"template 'nope' not found; valid: \[.*'tt'.*\]"):
        adtn.templates.get("nope")


def test_register_new_template():
    @adtn.templates.register("_test_low_rank", formula=lambda axes, rank: rank * sum(axes.values()), kinds=("linear",))
    def low_rank(axes, rank):
        g = TensorGraph("lr")
        g.add_node("u", legs={"o": axes["out"], "r": rank}).add_node("v", legs={"r": rank, "i": axes["in"]})
        return g.bond("u.r", "v.r").set_outputs({"out": ["u.o"], "in": ["v.i"]}).freeze()

    try:
        t = adtn.templates.get("_test_low_rank")
        assert t.build({"out": 5, "in": 7}, rank=2).num_params == t.formula({"out": 5, "in": 7}, rank=2) == 24
    finally:
        adtn.templates.TEMPLATES.pop("_test_low_rank")


@pytest.mark.parametrize("name", NAMES)
def test_formula_dense_shape_and_gradcheck(name):
    axes, options = example(name)
    template = adtn.templates.get(name)
    structure = template.build(axes, **options)
    assert structure.num_params == template.formula(axes, **options)
    m = adtn.compile(structure, dtype=torch.float64)
    w = m.dense()
    assert tuple(w.shape) == tuple(axes.values())
    assert torch.isfinite(w).all()
    assert sum(p.numel() for p in m.parameters()) == structure.num_params
    # gradcheck on a shrunken problem for speed: only the first parameter varies
    names = [n for n, p in m.named_parameters()]
    first = names[0]

    def f(t):
        return torch.func.functional_call(m, {first: t}, ()).sum(dim=0)

    p0 = dict(m.named_parameters())[first].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (p0,), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_every_template_draws(tmp_path, name):
    axes, options = example(name)
    structure = adtn.templates.get(name).build(axes, **options)
    path = tmp_path / f"{name}.png"
    structure.draw(path)
    assert path.exists() and path.stat().st_size > 1000
