"""Write the declared TT / TR / HT / semi-tensor example graphs of graphs/ as JSON.

Run ``python graphs/make_tt_ht.py`` from the repository root (or anywhere); each entry of
``GRAPHS`` is file name -> (template, axes, options) and is rebuilt with the registered
template. Tests load every file and check it against the template's parameter formula.
"""

from __future__ import annotations

from pathlib import Path

from adtn.templates import ht, semi, tt  # noqa: F401  (importing registers the templates)
from adtn.templates.registry import get

HERE = Path(__file__).resolve().parent
SQUARE = {"out": 4096, "in": 4096}  # VGG-16's 4096 x 4096 classifier layer
BALANCED = ((8, 8, 8, 8), (8, 8, 8, 8))
CONV = {"out": 64, "in": 64, "kh": 3, "kw": 3}

GRAPHS: dict[str, tuple[str, dict[str, int], dict]] = {
    "tt_4096x4096_r16.json": ("tt", SQUARE, {"rank": 16, "modes": BALANCED}),
    "tr_4096x4096_r16.json": ("tr", SQUARE, {"rank": 16, "modes": BALANCED}),
    "ht_4096x4096_r16.json": ("ht", SQUARE, {"rank": 16, "modes": BALANCED}),
    "stt_4096x4096_r16_t2.json": ("semi_tt", SQUARE, {"rank": 16, "modes": BALANCED, "t": 2}),
    "str_4096x4096_r16_t2.json": ("semi_tr", SQUARE, {"rank": 16, "modes": BALANCED, "t": 2}),
    # Novikov et al. 2015, MNIST: a 1024 x 1024 layer as 4^5 x 4^5, TT rank 8
    "tt_1024x1024_r8.json": ("tt", {"out": 1024, "in": 1024}, {"rank": 8, "modes": ((4,) * 5, (4,) * 5)}),
    # VGG-16's 512 -> 4096 classifier layer (weight 4096 x 512)
    "ht_4096x512_r8.json": ("ht", {"out": 4096, "in": 512}, {"rank": 8, "modes": ((8, 8, 8, 8), (8, 4, 4, 4))}),
    # Garipov et al. 2016 style conv: spatial core then channel cores
    "tt_conv_64x64x3x3_r8.json": ("tt", CONV, {"rank": 8, "modes": ((8, 8), (8, 8))}),
    "tr_conv_64x64x3x3_r8.json": ("tr", CONV, {"rank": 8, "modes": ((8, 8), (8, 8))}),
    "ht_conv_64x64x3x3_r8.json": ("ht", CONV, {"rank": 8, "modes": ((8, 8), (8, 8))}),
}


def build(filename: str):
    """The graph that ``filename`` declares, rebuilt from its template."""
    template, axes, options = GRAPHS[filename]
    return get(template).build(axes, **options)


def main() -> None:
    for filename in GRAPHS:
        graph = build(filename)
        graph.save(HERE / filename)
        print(f"{filename}: {graph}")


if __name__ == "__main__":
    main()
