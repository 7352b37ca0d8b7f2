"""Pictures of tensor networks: networkx layouts drawn with matplotlib.

Nodes are sized by their number of entries and styled by role (param: circles, fixed:
grey squares, input: green diamonds); bonds are labelled with their size; every open leg
is drawn as a short stub ending in a small label ``axis[k]=size``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from .errors import AdtnError

if TYPE_CHECKING:  # graph.py imports this module for TensorGraph.draw()
    from .graph import TensorGraph

__all__ = ["draw"]

_STYLE = {
    "param": {"node_shape": "o", "node_color": "#4C72B0"},
    "fixed": {"node_shape": "s", "node_color": "#999999"},
    "input": {"node_shape": "D", "node_color": "#55A868"},
}


def _layout(graph: TensorGraph, layout: str) -> dict[str, Any]:
    simple = nx.Graph(graph.nx)
    if layout == "spring":
        return nx.spring_layout(simple, seed=0)
    if layout == "kamada_kawai":
        return nx.kamada_kawai_layout(simple) if len(simple) > 1 else {n: (0.0, 0.0) for n in simple}
    if layout == "circular":
        return nx.circular_layout(simple)
    if layout == "line":
        return {n: (float(i), 0.0) for i, n in enumerate(graph.nodes)}
    raise AdtnError(f"draw: unknown layout {layout!r}; valid: ['circular', 'kamada_kawai', 'line', 'spring']")


def draw(
    graph: TensorGraph,
    path: str | Path | None = None,
    ax: Any = None,
    layout: str = "kamada_kawai",
    title: str | None = None,
) -> Any:
    """Draw ``graph``; save to ``path`` (PNG, SVG, PDF) when given. Returns the matplotlib figure."""
    try:
        import matplotlib

        if path is not None and ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise AdtnError("draw needs matplotlib: pip install adtn[viz]") from None
    pos = _layout(graph, layout)
    n = len(graph)
    if ax is None:
        side = min(14.0, 4.0 + 0.6 * math.sqrt(n) * 2)
        fig, ax = plt.subplots(figsize=(side, side * 0.75))
    else:
        fig = ax.figure
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
    stub = 0.16 * span

    simple = nx.MultiGraph()
    simple.add_nodes_from(graph.nodes)
    for bond in graph.bonds:
        simple.add_edge(bond.a.node, bond.b.node)
    nx.draw_networkx_edges(simple, pos, ax=ax, width=1.5, edge_color="#333333")
    edge_labels: dict[tuple[str, str], str] = {}
    for bond in graph.bonds:
        key = (bond.a.node, bond.b.node)
        label = str(bond.size)
        edge_labels[key] = f"{edge_labels[key]},{label}" if key in edge_labels else label
    nx.draw_networkx_edge_labels(simple, pos, edge_labels=edge_labels, ax=ax, font_size=7)

    center = (sum(xs) / n, sum(ys) / n)
    axis_of = {leg: axis for axis, legs in graph.outputs.items() for leg in legs}
    for name in graph.nodes:
        open_legs = [leg for leg in graph.legs(name) if graph.partner((name, leg)) is None]
        x0, y0 = pos[name]
        base = math.atan2(y0 - center[1], x0 - center[0]) if (x0, y0) != center else math.pi / 2
        for k, leg in enumerate(open_legs):
            ref = graph.leg((name, leg))
            axis = axis_of.get(ref, "?")
            index = graph.outputs[axis].index(ref) if axis in graph.outputs else 0
            angle = base + (k - (len(open_legs) - 1) / 2) * 0.8
            x1, y1 = x0 + stub * math.cos(angle), y0 + stub * math.sin(angle)
            ax.plot([x0, x1], [y0, y1], color="#C44E52", lw=1.2, zorder=0)
            ax.text(x1, y1, f"{axis}[{index}]={graph.leg_size(ref)}", fontsize=6, color="#C44E52", ha="center")

    sizes = {n: math.prod(graph.shape(n)) for n in graph.nodes}
    biggest = max(sizes.values())
    for role, style in _STYLE.items():
        members = graph.nodes_with_role(role)
        if not members:
            continue
        node_size = [200 + 900 * math.log1p(sizes[m]) / math.log1p(biggest) for m in members]
        nx.draw_networkx_nodes(simple, pos, nodelist=members, ax=ax, node_size=node_size, **style, label=role)
    labels = {m: f"{m}\n{'x'.join(map(str, graph.shape(m)))}" for m in graph.nodes}
    nx.draw_networkx_labels(simple, pos, labels=labels, ax=ax, font_size=7, font_color="black")
    ax.set_title(title or f"{graph.name}: {n} nodes, {graph.num_params:,} params")
    ax.legend(loc="best", fontsize=7, markerscale=0.4)
    ax.set_axis_off()
    ax.margins(0.15)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig
