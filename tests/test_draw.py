import pytest
import torch

import adtn
from adtn.errors import AdtnError


def small_graph():
    g = adtn.TensorGraph("drawn")
    g.add_node("v", legs={"k": 2}, role="fixed", value=[1.0, 0.0])
    g.add_node("a", legs={"k": 2, "r": 3, "o": 4})
    g.add_node("x", legs={"r": 3, "b": 5}, role="input")
    g.bond("v.k", "a.k")
    g.bond("a.r", "x.r")
    return g.set_outputs({"out": ["a.o"], "batch": ["x.b"]}).freeze()


@pytest.mark.parametrize("layout", ["kamada_kawai", "spring", "circular", "line"])
def test_draw_writes_png(tmp_path, layout):
    path = tmp_path / f"g_{layout}.png"
    fig = small_graph().draw(path, layout=layout)
    assert path.exists() and path.stat().st_size > 1000
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("out[0]=4" in t for t in texts)  # open legs labelled with their axis
    assert any(t == "3" for t in texts)  # bond labelled with its size
    assert any("a\n2x3x4" in t for t in texts)  # node labelled with its shape


def test_draw_unknown_layout(tmp_path):
    with pytest.raises(AdtnError, match=r"unknown layout 'grid'; valid:"):
        small_graph().draw(tmp_path / "x.png", layout="grid")


def test_draw_single_node(tmp_path):
    g = adtn.TensorGraph("one")
    g.add_node("a", legs={"i": 2})
    g.set_outputs({"x": ["a.i"]}).freeze()
    g.draw(tmp_path / "one.png")
    assert (tmp_path / "one.png").exists()
    assert torch.is_tensor(adtn.compile(g).dense())


def _node_offsets(fig):
    """The (x, y) of every drawn node, per subplot (nodes are scatter collections)."""
    return [[tuple(xy) for c in ax.collections if hasattr(c, "get_offsets") and c.get_offsets().size
             for xy in c.get_offsets()] for ax in fig.axes]


def test_deep_draw_honours_layout(tmp_path):
    from adtn.templates.adtn import DeepTN

    deep = adtn.templates.get("adtn").build({"out": 4, "in": 4}, depth=2)
    assert isinstance(deep, DeepTN)
    line = _node_offsets(deep.draw(tmp_path / "line.png", layout="line"))
    spring = _node_offsets(deep.draw(tmp_path / "spring.png"))
    assert len(line) == 2 and all(line) and all(y == 0.0 for ax in line for _, y in ax)
    assert any(y != 0.0 for ax in spring for _, y in ax)
    with pytest.raises(AdtnError, match="unknown layout 'grid'"):
        deep.draw(tmp_path / "x.png", layout="grid")
