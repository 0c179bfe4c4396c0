"""The entry points: :func:`load_model` (a model file parsed in a sandboxed child, rebuilt here from plain data),
:func:`check_input`, and the child's side of the hand-over (:func:`sandbox_parse`, :func:`warm_up`)."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import sandbox
from .errors import ModelLoadError, err, one_line
from .export import load_export
from .files import read_file, sniff, stat_file
from .handover import describe_graph, pack, rebuild
from .tensors import WEIGHT_DTYPES, read_safetensors, read_state_dict, write_safetensors
from .torchscript import load_torchscript


def load_model(
    path: str | os.PathLike[str], arch: str | None = None, *, num_classes: int | None = None,
    limits: sandbox.Limits | None = None, hook: str | None = None,
) -> nn.Module:
    """Load a model file (format detected by content) as an eval-mode, fx-traceable module.

    The file is parsed in a sandboxed child process (see :mod:`ttfs_core.untrusted`); this process only rebuilds
    the model from the child's plain-data description. ``limits``: the child's limits (None:
    :data:`.sandbox.DEFAULT_LIMITS`); ``hook``: tests only, makes the child misbehave (see :func:`.sandbox.run`).
    """
    try:
        p = Path(path)
        stat_file(p)  # the common mistakes are reported without starting a child
        try:
            payload = sandbox.run(
                "ttfs_core.untrusted.loader:sandbox_parse", {"path": str(p.absolute())}, limits, hook=hook
            )
        except sandbox.SandboxError as e:
            if e.kind == "refused":
                raise ModelLoadError(one_line(e.message, 500)) from None
            if e.kind == "busy":
                raise ModelLoadError(f"cannot load the model file: {e.message}") from None
            if e.kind == "internal":
                raise err("cannot load the model file: the sandbox failed", e.message, hint=None) from None
            hint = "the file is corrupt, too complex or hostile"
            raise err(f"cannot load the model file: the sandboxed parser {e.message}", hint=hint) from None
        return rebuild(payload, arch, num_classes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a hostile file provokes is reported in one line
        raise err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def _load_in_process(
    path: str | os.PathLike[str], arch: str | None = None, *, num_classes: int | None = None
) -> nn.Module:
    """:func:`load_model` without the sandbox: the same checks, run in this process (debugging, benchmarks)."""
    try:
        return rebuild(sandbox_parse({"path": str(path)}), arch, num_classes)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def sandbox_parse(request: dict[str, Any]) -> bytes:
    """The sandboxed child's side of :func:`load_model`: parse the file, describe the result as plain data."""
    try:
        kind, obj = _parse(request["path"])
        if kind == "graph":
            desc, tensors = describe_graph(obj)
        else:
            desc, tensors = {"kind": "state_dict", "names": list(obj)}, obj
        return pack(desc, tensors)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise err("cannot load the model file", f"{type(e).__name__}: {e}") from e


def warm_up() -> None:
    """Run each format's loader once on a tiny model of our own (called by the sandbox's zygote before it forks
    children, so that each child does not redo torch's lazy initialisation: about 0.5 s per .pt2 file)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU()).eval()
    x = torch.zeros(2, 1, 2, 2)
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for save in (
            lambda f: torch.export.save(torch.export.export(model, (x,)), f),
            lambda f: torch.jit.save(torch.jit.script(model), f),
        ):
            buf = io.BytesIO()
            save(buf)
            files.append(buf.getvalue())
    for data in files:
        kind, zf = sniff(data)
        pack(*describe_graph(load_export(zf) if kind == "export" else load_torchscript(zf)))
    read_safetensors(write_safetensors(model.state_dict()), "warm-up", WEIGHT_DTYPES)


def _parse(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """('graph', fx.GraphModule) or ('state_dict', dict of tensors) from a model file."""
    data = read_file(path)
    kind, zf = sniff(data)
    if kind == "export":
        return "graph", load_export(zf)
    if kind == "torchscript":
        return "graph", load_torchscript(zf)
    return "state_dict", read_state_dict(data, kind)


def check_input(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """Run one zero batch of shape ``(1, *input_shape)``; return the output or raise ModelLoadError."""
    shape = (1, *(int(s) for s in input_shape))
    try:
        p = next(iter(model.parameters()), None)
        x = torch.zeros(shape, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            return model(x)
    except Exception as e:  # noqa: BLE001 - any failure means the shape does not fit
        raise ModelLoadError(f"the model cannot take inputs of shape {shape}: {one_line(e, 250)}") from e

