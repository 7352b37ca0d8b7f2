"""The chain executor's backward pieces (adtn/layers/chain.py) against plain torch."""

from __future__ import annotations

import pytest
import torch

from adtn.layers.chain import _sum_of_products


@pytest.mark.parametrize("chunk_entries", [1, 6 * 5 * 7, 1 << 21])  # one row a chunk, 7 rows, all rows at once
def test_sum_of_products_in_chunks_matches_einsum(chunk_entries: int) -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(23, 6, 4, dtype=torch.float64, generator=gen)
    s = torch.randn(23, 5, 4, dtype=torch.float64, generator=gen)
    got = _sum_of_products(g, s, chunk_entries)
    torch.testing.assert_close(got, torch.einsum("rpt,rqt->pq", g, s))
