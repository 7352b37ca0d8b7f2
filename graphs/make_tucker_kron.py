"""Write the declared Tucker, Tucker-2, CP, GKPD and semi-Tucker graphs of graphs/ as JSON.

Run from the repository root: ``python graphs/make_tucker_kron.py``. ``GRAPHS`` maps each file
to (template, axes, options); tests rebuild every entry and compare it with the file.
"""

from __future__ import annotations

from pathlib import Path

from adtn.templates import cp, kronecker, semi_tucker, tucker  # noqa: F401  (registers the templates)
from adtn.templates.registry import get

CONV64 = {"out": 64, "in": 64, "kh": 3, "kw": 3}  # a 64 -> 64 3x3 conv kernel, as in docs/results.md (GKPD)
FC784 = {"out": 256, "in": 784}  # the first layer of the MNIST FC-2 (784 -> 256)

GRAPHS: dict[str, tuple[str, dict[str, int], dict]] = {
    # GKPD (Hameed et al., AAAI 2022): A (16, 16, 3, 1) (x) B (4, 4, 1, 3); R (768 + 48) params.
    "gkpd_conv64_r1.json": ("kronecker", CONV64, {"rank": 1, "factors": ((16, 16, 3, 1), (4, 4, 1, 3))}),
    "gkpd_conv64_r8.json": ("kronecker", CONV64, {"rank": 8, "factors": ((16, 16, 3, 1), (4, 4, 1, 3))}),
    # Tucker-2 near half the kernel's 36,864 params: 64*38 + 9*38*38 + 38*64 = 17,860.
    "tucker2_conv64_r38.json": ("tucker2", CONV64, {"rank": 38}),
    # Tucker of a weight matrix: U_out (256 x 32) core (32 x 32) U_in (784 x 32).
    "tucker_fc784_r32.json": ("tucker", FC784, {"rank": 32}),
    # CP of the conv kernel: R (64 + 64 + 3 + 3) params, two fixed 16^3 copy tensors.
    "cp_conv64_r16.json": ("cp", CONV64, {"rank": 16}),
    # Semi-tensor Tucker: channel factors (32 x 16) on a (32, 32, 3, 3) core.
    "sttu_conv64_r32_t2.json": ("semi_tucker", CONV64, {"rank": 32, "t": 2, "compress": ("out", "in")}),
    "sttu_fc784_r64_t4.json": ("semi_tucker", FC784, {"rank": 64, "t": 4}),
}


def build(file: str):
    """The graph declared for ``file``."""
    template, axes, options = GRAPHS[file]
    return get(template).build(axes, **options)


def main(folder: Path = Path(__file__).parent) -> None:
    for file in GRAPHS:
        graph = build(file)
        graph.save(folder / file)
        print(f"{file}: {graph}")


if __name__ == "__main__":
    main()
