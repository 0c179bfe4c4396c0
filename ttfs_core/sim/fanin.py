"""The fan-in gather (MATH §6): each listed neuron's input values and weights over every input of its layer, in
the order of its weight rows. The exact search, the peak drive, the certificate's sparse stages and the traces
read neurons' inputs this way instead of whole weighted sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .dynamics import part_shape


def pad_input(syn, values: Tensor, pad: float) -> Tensor:
    """The routed input of one `Synapses` with a conv's zero-padding border filled with `pad`.
    Shape: (B, *in_shape) -> (B, C, H + 2·ph, W + 2·pw) for a conv, unchanged for a dense map."""
    if syn.conv is None:
        return values
    ph, pw = syn.conv["padding"]
    return F.pad(values, (pw, pw, ph, ph), value=pad)


def gather_fan_in(syn, padded: Tensor, idx: tuple[Tensor, ...]) -> Tensor:
    """Each listed neuron's inputs through one `Synapses`, in the order of its weight row: the values under a
    conv neuron's kernel (from `pad_input`), or the whole flattened input of a dense neuron. Neuron indices are
    local to the channels the synapses drive.

    Shape: padded (B, ...); idx (b, o[, y, x]) each (F,) -> (F, fan-in).
    """
    if syn.conv is None:
        return padded.flatten(1)[idx[0]]
    (sh, sw), (dh, dw), groups = syn.conv["stride"], syn.conv["dilation"], syn.conv["groups"]
    out_ch, cin_g, kh, kw = syn.weight.shape
    b, o, y, x = idx
    _, chans, height, width = padded.shape
    dev = padded.device
    # flat offsets: each neuron's first tap, plus the kernel's taps relative to it (in the weight row's order)
    first = ((b * chans + (o // (out_ch // groups)) * cin_g) * height + y * sh) * width + x * sw
    taps = ((torch.arange(cin_g, device=dev)[:, None, None] * height
             + torch.arange(kh, device=dev)[None, :, None] * dh) * width
            + torch.arange(kw, device=dev)[None, None, :] * dw).reshape(-1)
    flat = (first[:, None] + taps[None, :]).reshape(-1)
    return padded.contiguous().reshape(-1).index_select(0, flat).reshape(len(first), len(taps))


def gather_rows(inputs, shape: tuple[int, ...], padded: list[Tensor], ws: list[Tensor],
                idx: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The listed neurons' inputs over all `inputs` (`Synapses`) of a layer of `shape`, concatenated: input values
    (`padded[k]`: input k's routed tensor through `pad_input`), weights (`ws[k]` in input k's layout, whole; 0
    where an input does not drive the neuron's channel) and which input each came from.

    Shape: idx (b, o[, ...]) each (F,) indices into (B, *shape) -> three (F, total fan-in) tensors.
    """
    values, weights, which_input = [], [], []
    for k, (syn, v, w) in enumerate(zip(inputs, padded, ws)):
        o = idx[1]
        inside = None
        if syn.channels is not None:
            lo, hi = syn.channels
            inside = (o >= lo) & (o < hi)
            o = (o - lo).clamp(0, hi - lo - 1)
        local = (idx[0], o, *idx[2:])
        t = gather_fan_in(syn, v, local)
        if syn.conv is not None:
            rows = w.flatten(1)[o]
        else:  # a dense map: one weight row per neuron of the part, in its flat order
            flat = torch.zeros_like(o)
            for i, size in zip(local[1:], part_shape(syn, shape)):
                flat = flat * size + i
            rows = w[flat]
        if inside is not None:
            rows = torch.where(inside[:, None], rows, torch.zeros_like(rows))
        values.append(t)
        weights.append(rows)
        which_input.append(torch.full_like(t, k, dtype=torch.long))
    if len(values) == 1:
        return values[0], weights[0], which_input[0]
    return torch.cat(values, 1), torch.cat(weights, 1), torch.cat(which_input, 1)
