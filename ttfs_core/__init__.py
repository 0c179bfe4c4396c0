"""Exact conversion of trained ReLU networks into time-to-first-spike spiking networks.

    snn = ttfs_core.convert(model, calibration_inputs)
    result = snn.run(x)          # exact event-driven simulation: result.logits == model(x)
    ttfs_core.compare(model, snn, x)

The equations follow the repository's MATH.md (Stanojevic et al., Neural Networks 2023).
"""

from .compare import LayerComparison, compare, record_activations
from .convert import convert
from .errors import ConversionError, InputError
from .network import SpikingNetwork
from .persist import NetworkFileError
from .persist import load_network as load
from .persist import save_network as save
from .records import Layer, Synapses
from .sim.result import LayerResult, SimResult

__all__ = [
    "ConversionError", "InputError", "Layer", "LayerComparison", "LayerResult", "NetworkFileError", "SimResult",
    "SpikingNetwork", "Synapses", "compare", "convert", "load", "record_activations", "save",
]
__version__ = "0.1.0"
