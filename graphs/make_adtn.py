"""Write the declared deep ADTN networks of graphs/ as JSON (schema ``adtn.deep/1``).

Run from the repository root: ``python graphs/make_adtn.py``. ``GRAPHS`` maps each file to
(axes, options of ``adtn.templates.adtn.build``); tests rebuild every entry and compare it
with the file. Load one with ``adtn.DeepTN.load(path)``.
"""

from __future__ import annotations

from pathlib import Path

from adtn.templates.adtn import build as adtn

GRAPHS: dict[str, tuple[dict[str, int], dict]] = {
    # VGG-16 on CIFAR-10 (Qing et al., arXiv 2305.06058): the two 4096-wide classifier layers at depth 1.
    # 512 -> 4096: Q = 21, 10 boundary gates x 4 + 10 gates x 16 = 200 parameters.
    "adtn_vgg16_fc1.json": ({"out": 4096, "in": 512}, {"depth": 1}),
    # 4096 -> 4096: Q = 24, 12 x 4 + 11 x 16 = 224 parameters (together with fc1: 424).
    "adtn_vgg16_fc2.json": ({"out": 4096, "in": 4096}, {"depth": 1}),
    # MNIST FC-2's first layer 784 -> 256 padded to 2^18 (the ADTN reproduction in docs/results.md), depth 3, ReLU.
    "adtn_mnist_fc1_d3.json": ({"out": 256, "in": 784}, {"depth": 3}),
}


def build(file: str):
    """The DeepTN declared for ``file``."""
    axes, options = GRAPHS[file]
    return adtn(axes, **options)


def main(folder: Path = Path(__file__).parent) -> None:
    for file in GRAPHS:
        deep = build(file)
        deep.save(folder / file)
        print(f"{file}: {deep}")


if __name__ == "__main__":
    main()
