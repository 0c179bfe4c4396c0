"""The one error every reader of a model file raises, and how its one-line messages are written."""

from __future__ import annotations

SUPPORTED_FORMATS = (
    "supported: torch.export .pt2, TorchScript .pt (torch.jit.save), "
    "state dict .safetensors/.pt/.pth with arch=<torchvision or ttfs_core.zoo name>"
)


class ModelLoadError(ValueError):
    """A model file cannot be loaded; the message is one line naming the problem."""


def one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def err(problem: str, reason: object = None, hint: str | None = SUPPORTED_FORMATS) -> ModelLoadError:
    msg = problem if reason is None else f"{problem}: {one_line(reason, 200)}"
    return ModelLoadError(one_line(msg if hint is None else f"{msg} ({hint})", 500))


def mib(n: int) -> str:
    return f"{n / (1 << 20):.4g} MiB" if n < 1 << 30 else f"{n / (1 << 30):.4g} GiB"

