"""Exact conversion of trained ReLU networks into time-to-first-spike spiking networks.

    snn = ttfs_core.convert(model, calibration_inputs)
    result = snn.run(x)          # exact event-driven simulation: result.logits == model(x)
    ttfs_core.compare(model, snn, x)

The equations follow the repository's MATH.md (Stanojevic et al., Neural Networks 2023).

The names below are imported on first use, so that importing the package (e.g. for ``ttfs --help``,
`ttfs_core.command`) does not import torch; `import ttfs_core.X` and `ttfs_core.X` work for every submodule X.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

__version__ = "0.1.0"

# OpenMP's threads sleep when idle instead of spinning. Read once, when torch loads OpenMP: this takes effect for
# the command line and the explorer's server (both import this package before torch) and for any program that
# imports ttfs_core first; an OMP_WAIT_POLICY already set wins (set it empty for the OpenMP default). Measured in
# bench/RESULTS.md ("threads"): on two cores shared with busy processes, spinning made a simulation ~4× slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {  # public name -> (submodule, attribute)
    "ConversionError": ("errors", "ConversionError"), "InputError": ("errors", "InputError"),
    "Layer": ("records", "Layer"), "Synapses": ("records", "Synapses"),
    "LayerComparison": ("compare", "LayerComparison"), "compare": ("compare", "compare"),
    "record_activations": ("compare", "record_activations"), "convert": ("convert", "convert"),
    "SpikingNetwork": ("network", "SpikingNetwork"), "NetworkFileError": ("persist", "NetworkFileError"),
    "load": ("persist", "load_network"), "save": ("persist", "save_network"),
    "LayerResult": ("sim.result", "LayerResult"), "SimResult": ("sim.result", "SimResult"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package, except that importing its submodules `convert` and `compare` does not rebind the names
    `ttfs_core.convert` and `ttfs_core.compare`, which stay the functions of the same names."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name, (None, None))[1] == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
