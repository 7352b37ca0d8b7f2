"""Portable compressed models: ``save`` writes plain data, ``load_into`` rebuilds it on a fresh model.

A file written by ``save`` is a ``torch.save`` of plain data only (``torch.load(weights_only=True)``
reads it): the format, a manifest that records every TN layer (its class and geometry, bias,
forward mode, template, options and the exact structure as JSON, so the searched shapes and
ranks come back as they were), the model's ``state_dict``, and the model pickled as bytes with
its tensors left out (for ``load``). ``load_into(model, path)`` needs no pickled class: given a
fresh instance of the dense model, it replaces each recorded layer by a TN layer of that exact
structure and loads the saved weights, so a model whose class lives in a script's ``__main__``
travels between processes:

    adtn.save(compressed, "model.pt")                        # process 1
    model = adtn.load_into(Net(), "model.pt")                # process 2, Net defined again
    model = adtn.load("model.pt")                            # whole model, when Net is importable
"""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .errors import AdtnError, SchemaError, ShapeError

__all__ = ["FORMAT", "load", "load_into", "manifest", "save"]

FORMAT = "adtn.model/2"
OLD_FORMAT = "adtn.model/1"  # the whole model pickled: read by ``load`` only
LINEAR_ARGS = ("in_features", "out_features")
CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def _plain(value: Any) -> bool:
    """True for data ``torch.load(weights_only=True)`` reads back as it was written."""
    if value is None or type(value) in (bool, int, float, str):  # not subclasses (numpy floats, TorchVersion)
        return True
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _args(layer: nn.Module) -> dict[str, Any]:
    """The torch-layer arguments a TN layer (or the dense layer it replaces) was built with."""
    keys = LINEAR_ARGS if isinstance(layer, nn.Linear) or getattr(layer, "kind", "") == "linear" else CONV_ARGS
    return {k: getattr(layer, k) for k in keys}


def layer_entry(layer: nn.Module) -> dict[str, Any]:
    """One TN layer's manifest entry: everything ``load_into`` needs to build it again, as plain data."""
    options = dict(layer.template_options)
    choice = getattr(layer, "shape_choice", None)
    choice = dataclasses.asdict(choice) if dataclasses.is_dataclass(choice) else None
    entry = {
        "class": type(layer).__name__,
        "args": _args(layer),
        "bias": layer.bias is not None,
        "forward": layer.forward_mode,
        "template": layer.template,
        "template_options": options if _plain(options) else None,
        "axes": dict(layer.axes),
        "params": layer.num_tn_params,
        "structure": layer.structure.to_json(),
        "shape_choice": choice if _plain(choice) else None,
    }
    return entry


def manifest(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per TN layer of ``model`` (by module name, ``"."`` for the model itself): its ``layer_entry``."""
    from .layers import TNLayer

    return {name or ".": layer_entry(m) for name, m in model.named_modules() if isinstance(m, TNLayer)}


# ---------------------------------------------------------------------- writing
def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
    """The state dict as a plain dict, and its per-module versions (the only metadata kept)."""
    sd = model.state_dict()
    versions = {k: {"version": v["version"]} for k, v in getattr(sd, "_metadata", {}).items()
                if isinstance(v.get("version"), int) and not isinstance(v.get("version"), bool)}
    return dict(sd), versions


def _skeleton(model: nn.Module) -> torch.Tensor:
    """The model pickled (as uint8 bytes) with every saved tensor replaced by a meta tensor."""
    names = model.state_dict(keep_vars=True)
    memo: dict[int, Any] = {}
    for t in names.values():
        if isinstance(t, nn.Parameter):
            memo[id(t)] = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
        elif isinstance(t, torch.Tensor):
            memo[id(t)] = torch.empty_like(t, device="meta")
    buf = io.BytesIO()
    torch.save(copy.deepcopy(model, memo), buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def save(model: nn.Module, path: str | Path | BinaryIO, *, pickle_model: bool = True) -> None:
    """Save a model holding TN layers so that ``load_into`` (or ``load``) gives it back, outputs bit-exact.

    The file is plain data (see the module doc). ``pickle_model=False`` leaves out the pickled
    model: ``load_into`` still works, ``load`` then asks for it.
    """
    if not isinstance(model, nn.Module):
        raise AdtnError(f"save: model must be an nn.Module, got {type(model).__name__}")
    for module in model.modules():  # rebuilt weights are caches: do not store them
        if getattr(module, "_dense_cache", None) is not None:
            module._dense_cache = None
    from .version import __version__

    state, versions = _state(model)
    cls = type(model)
    entries = manifest(model)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if "." in entries:  # the model is one TN layer: a fresh model is the dense layer it replaced
        name = {"TNLinear": "torch.nn.Linear", "TNConv2d": "torch.nn.Conv2d"}.get(cls.__name__, "torch.nn.Conv1d")
    payload = {"format": FORMAT, "adtn_version": str(__version__), "torch_version": str(torch.__version__),
               "model_class": name, "layers": entries,
               "state_dict": state, "versions": versions}
    if pickle_model:
        payload["model"] = _skeleton(model)
    torch.save(payload, path)


# ---------------------------------------------------------------------- reading
def _name(path: Any) -> str:
    return str(path) if isinstance(path, (str, Path)) else getattr(path, "name", type(path).__name__)


def _head(path: Any) -> bytes:
    try:
        if isinstance(path, (str, Path)):
            with open(path, "rb") as f:
                return f.read(8)
        pos = path.tell()
        head = path.read(8)
        path.seek(pos)
        return head if isinstance(head, bytes) else b""
    except (OSError, AttributeError):
        return b""


def _read(path: Any, where: str, map_location: Any, trusted: bool) -> dict[str, Any]:
    """The payload of an adtn file, read as plain data (``trusted``: an old-format file may be unpickled)."""
    head = _head(path)
    start = None if isinstance(path, (str, Path)) else path.tell()
    expected = f"expected a file written by adtn.save (format {FORMAT!r})"
    if isinstance(path, (str, Path)) and not Path(path).exists():
        raise SchemaError(f"{where}: {_name(path)!r} does not exist; {expected}")
    if not head.startswith(b"PK\x03\x04"):
        text = head.lstrip()[:1]
        hint = (": it is a JSON text (a structure? read it with adtn.load_structure)" if text in (b"{", b"[")
                else ": it is empty" if not head else ", and it is not a torch file")
        raise SchemaError(f"{where}: {_name(path)!r} is not a model file; {expected}{hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # an old-format file, or a corrupt one
        if not trusted:
            raise SchemaError(f"{where}: {_name(path)!r} holds pickled objects, not plain data; {expected}, "
                              f"or load it with adtn.load ({type(err).__name__})") from None
        if start is not None:
            path.seek(start)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        except (zipfile.BadZipFile, RuntimeError, EOFError) as err2:
            raise SchemaError(f"{where}: {_name(path)!r} cannot be read as a torch file ({err2}); {expected}") \
                from None
    got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if got not in (FORMAT, OLD_FORMAT):
        raise SchemaError(f"{where}: {_name(path)!r}: {expected}, got {got!r}")
    return payload


def _state_dict(payload: dict[str, Any]) -> OrderedDict:
    state = OrderedDict(payload["state_dict"])
    state._metadata = OrderedDict((k, dict(v)) for k, v in payload.get("versions", {}).items())
    return state


def load(path: str | Path | BinaryIO, map_location: Any = None) -> nn.Module:
    """The whole model written by ``save`` (its class must be importable here); ``map_location``
    as in ``torch.load``. The model part is unpickled: load only files you trust. Where the
    class is not importable (defined in another script's ``__main__``), use ``load_into``."""
    payload = _read(path, "load", map_location, trusted=True)
    if payload["format"] == OLD_FORMAT:
        return payload["model"]
    blob = payload.get("model")
    if blob is None:
        raise SchemaError(f"load: {_name(path)!r} was saved with pickle_model=False; build a fresh "
                          f"{payload['model_class']} and call adtn.load_into(model, path)")
    try:
        model = torch.load(io.BytesIO(blob.numpy().tobytes()), map_location=map_location, weights_only=False)
    except (AttributeError, ImportError) as err:
        raise SchemaError(f"load: {_name(path)!r}: the model class {payload['model_class']} cannot be imported here "
                          f"({err}); build a fresh instance of it and call adtn.load_into(model, path)") from None
    _assign(model, _state_dict(payload))
    return model


def _assign(model: nn.Module, state: OrderedDict) -> None:
    """Load ``state`` into the skeleton's meta tensors by assignment; a tensor the model holds at
    several places (tied weights) stays one tensor."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, t in [*module._parameters.items(), *module._buffers.items()]:
            if t is not None:
                places.setdefault(id(t), []).append((module, attr))
    model.load_state_dict(state, assign=True)
    for (first, attr), *others in (v for v in places.values() if len(v) > 1):
        kept = getattr(first, attr)
        for module, name in others:
            (module._parameters if name in module._parameters else module._buffers)[name] = kept


# ---------------------------------------------------------------------- rebuilding on a fresh model
def _check(where: str, module: nn.Module, entry: dict[str, Any]) -> type:
    """The TN layer class for ``entry``; ``module`` must be the dense layer it replaced (or a TN layer)."""
    from .layers import TNConv1d, TNConv2d, TNLinear

    classes = {"TNLinear": (TNLinear, nn.Linear), "TNConv2d": (TNConv2d, nn.Conv2d), "TNConv1d": (TNConv1d, nn.Conv1d)}
    if entry.get("class") not in classes:
        raise SchemaError(f"{where}: unknown TN layer class {entry.get('class')!r}; known: {sorted(classes)}")
    cls, dense = classes[entry["class"]]
    if not isinstance(module, (cls, dense)):
        raise SchemaError(f"{where}: the file holds a {cls.__name__} here, so the model needs an nn.{dense.__name__} "
                          f"(or a {cls.__name__}), got {type(module).__name__}")
    got = _args(module)
    for k, saved in entry["args"].items():
        mine = got.get(k)
        if (list(mine) if isinstance(mine, tuple) else mine) != (list(saved) if isinstance(saved, tuple) else saved):
            raise ShapeError(f"{where}: the saved layer has {k}={saved!r}, the model's has {mine!r}")
    if (module.bias is not None) != entry["bias"]:
        raise ShapeError(f"{where}: the saved layer has bias={entry['bias']}, the model's has "
                         f"bias={module.bias is not None}")
    return cls


def _rebuild(where: str, module: nn.Module, entry: dict[str, Any]) -> nn.Module:
    from .structures import load_structure
    from .templates.registry import get

    cls = _check(where, module, entry)
    structure = load_structure(entry["structure"])
    ref = module.tn.dtype if hasattr(module, "tn") else module.weight.dtype
    device = next(module.parameters()).device
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["args"].items()}
    layer = cls(**args, bias=entry["bias"], forward=entry["forward"], structure=structure, device=device, dtype=ref)
    if entry.get("template") is not None:  # the manifest has it (a DeepTN saved before meta kept no stamp)
        layer.template = get(entry["template"]).name
        if entry.get("template_options") is not None:
            layer.template_options = dict(entry["template_options"])
    if entry.get("shape_choice") is not None:
        from .shapes.search import ShapeChoice

        layer.shape_choice = ShapeChoice(**entry["shape_choice"])
    if layer.num_tn_params != entry.get("params", layer.num_tn_params):
        raise SchemaError(f"{where}: the rebuilt network has {layer.num_tn_params:,} parameters, the saved one "
                          f"{entry['params']:,}")
    return layer


def load_into(model: nn.Module, path: str | Path | BinaryIO, map_location: Any = "cpu") -> nn.Module:
    """Rebuild the TN layers recorded by ``save`` on ``model`` and load the saved weights; returns it.

    ``model`` is a fresh instance of the dense model that was compressed (its class defined
    anywhere, e.g. again in this script): each recorded layer is replaced by a TN layer with
    the exact saved structure (template, options, modes, ranks of a searched shape), on the
    layer's device and dtype, and the state dict is loaded strictly. Nothing is unpickled
    beyond plain data. The model is changed in place (a new object only when ``model`` is
    itself the one layer).
    """
    if not isinstance(model, nn.Module):
        raise AdtnError(f"load_into: model must be an nn.Module (a fresh instance of the saved model's class), got "
                        f"{type(model).__name__}")
    payload = _read(path, "load_into", map_location, trusted=False)
    if payload["format"] == OLD_FORMAT:  # pragma: no cover - _read rejects pickled files when not trusted
        raise SchemaError(f"load_into: {_name(path)!r} has the old format {OLD_FORMAT!r}; load it with adtn.load")
    aliases: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(name)
    for name, entry in payload["layers"].items():
        where = f"load_into: layer {name!r}"
        key = "" if name == "." else name
        try:
            module = model.get_submodule(key)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][:20]
            raise SchemaError(f"{where}: the file has a TN layer here, but {type(model).__name__} has no such "
                              f"module; modules: {names}") from None
        layer = _rebuild(where, module, entry)
        for alias in aliases.get(id(module), [key]):
            if not alias:
                model = layer
                continue
            parent, _, leaf = alias.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, layer)
    try:
        result = model.load_state_dict(_state_dict(payload), strict=False)
    except RuntimeError as err:
        raise SchemaError(f"load_into: {type(model).__name__} does not match the saved model: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise SchemaError(f"load_into: {type(model).__name__} does not match the saved model: missing "
                          f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]} (is it the same "
                          f"class, built with the same arguments?)")
    return model

