"""Draw every registered template at a small size into docs/img/<name>.png.

    python docs/draw_templates.py [--out docs/img]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import adtn
from adtn.graph import TensorGraph
from adtn.testing import TEMPLATE_EXAMPLES as EXAMPLES


def draw_all(out: Path) -> list[Path]:
    """Draw each registered template (with a generic example for ones not listed above)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in adtn.templates.names():
        axes, options = EXAMPLES.get(name, ({"out": 16, "in": 16}, {"rank": 2}))
        structure = adtn.templates.get(name).build(axes, **options)
        path = out / f"{name}.png"
        if isinstance(structure, TensorGraph):
            structure.draw(path, title=f"{name}: {structure.num_params} params")
        else:
            structure.draw(path)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parent / "img"))
    args = parser.parse_args()
    for path in draw_all(Path(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
