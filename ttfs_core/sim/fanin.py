"""The fan-in gather (MATH §6): each listed neuron's input values and weights over every input of its layer, in
the order of its weight rows. The exact search, the peak drive, the certificate's sparse stages and the traces
read neurons' inputs this way instead of whole weighted sums.
"""

from __future__ import annotations

import itertools

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


def reachable_taps(syn, padded: Tensor, idx: tuple[Tensor, ...]) -> Tensor | None:
    """Which entries of a conv neuron's weight row (input channel, kernel row, kernel column) fall inside the input,
    not on its zero padding, for at least one of the listed neurons; None when all of them do (and for a dense map).
    A kernel larger than its input (a 3×3 convolution on a 1×1 map, Inception-v3's pooled branches at 80×80) reads
    padding with most of its taps. Shape: idx (b, o, y, x) each (F,) -> (cin/groups · kh · kw,) bool or None."""
    if syn.conv is None:
        return None
    (sh, sw), (ph, pw), (dh, dw) = syn.conv["stride"], syn.conv["padding"], syn.conv["dilation"]
    if not (ph or pw):
        return None
    _, cin_g, kh, kw = syn.weight.shape
    height, width = padded.shape[2] - 2 * ph, padded.shape[3] - 2 * pw
    dev = padded.device

    def inside(pos: Tensor, stride: int, pad: int, dil: int, taps: int, size: int) -> Tensor:
        at = pos.unique()[:, None] * stride + torch.arange(taps, device=dev)[None, :] * dil  # padded coordinates
        return ((at >= pad) & (at < pad + size)).any(0)

    rows, cols = inside(idx[2], sh, ph, dh, kh, height), inside(idx[3], sw, pw, dw, kw, width)
    if bool(rows.all()) and bool(cols.all()):
        return None
    return (rows[:, None] & cols[None, :]).expand(cin_g, kh, kw).reshape(-1)


def gather_fan_in(syn, padded: Tensor, idx: tuple[Tensor, ...], keep: Tensor | None = None) -> Tensor:
    """Each listed neuron's inputs through one `Synapses`, in the order of its weight row: the values under a
    conv neuron's kernel (from `pad_input`), or the whole flattened input of a dense neuron. Neuron indices are
    local to the channels the synapses drive. `keep`: only those entries of the weight row (`reachable_taps`).

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
    if keep is not None:
        taps = taps[keep]
    flat = (first[:, None] + taps[None, :]).reshape(-1)
    return padded.contiguous().reshape(-1).index_select(0, flat).reshape(len(first), len(taps))


def inside_taps(inputs, padded: list[Tensor], idx: tuple[Tensor, ...]) -> tuple[list[Tensor | None], int]:
    """`reachable_taps` of every input for the listed neurons (indices into (B, *layer shape)), and the fan-in
    they leave: for `gather_rows(..., keeps=...)` on these neurons or any part of them."""
    keeps = [reachable_taps(syn, v, idx) if len(idx) == 4 else None for syn, v in zip(inputs, padded)]
    fan = sum(syn.J[0].numel() if keep is None else int(torch.count_nonzero(keep))
              for syn, keep in zip(inputs, keeps))
    return keeps, fan


def gather_rows(inputs, shape: tuple[int, ...], padded: list[Tensor], ws: list[Tensor],
                idx: tuple[Tensor, ...], keeps: list[Tensor | None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The listed neurons' inputs over all `inputs` (`Synapses`) of a layer of `shape`, concatenated: input values
    (`padded[k]`: input k's routed tensor through `pad_input`), weights (`ws[k]` in input k's layout, whole; 0
    where an input does not drive the neuron's channel) and which input each came from (a view). `keeps`
    (`inside_taps`): without the kernel taps that fall on the padding for every listed neuron, for computations to
    which a padded tap contributes nothing (the exact search, the certificate).

    Shape: idx (b, o[, ...]) each (F,) indices into (B, *shape) -> three (F, total fan-in) tensors.
    """
    values, weights = [], []
    for k, (syn, v, w) in enumerate(zip(inputs, padded, ws)):
        o = idx[1]
        inside = None
        if syn.channels is not None:
            lo, hi = syn.channels
            inside = (o >= lo) & (o < hi)
            o = (o - lo).clamp(0, hi - lo - 1)
        local = (idx[0], o, *idx[2:])
        keep = None if keeps is None else keeps[k]
        t = gather_fan_in(syn, v, local, keep)
        if syn.conv is not None:
            rows = (w.flatten(1) if keep is None else w.flatten(1)[:, keep])[o]
        else:  # a dense map: one weight row per neuron of the part, in its flat order
            flat = torch.zeros_like(o)
            for i, size in zip(local[1:], part_shape(syn, shape)):
                flat = flat * size + i
            rows = w[flat]
        if inside is not None:
            rows = torch.where(inside[:, None], rows, torch.zeros_like(rows))
        values.append(t)
        weights.append(rows)
    sizes = torch.tensor([t.shape[1] for t in values], device=values[0].device)
    which_input = torch.arange(len(values), device=sizes.device).repeat_interleave(sizes)
    which_input = which_input[None, :].expand(len(idx[0]), -1)
    if len(values) == 1:
        return values[0], weights[0], which_input
    return torch.cat(values, 1), torch.cat(weights, 1), which_input


def drop_silent(values: Tensor, weights: Tensor, live: Tensor) -> tuple[Tensor, Tensor]:
    """Gathered fan-ins without the columns that are silent for every listed neuron (`live` false in the whole
    column): an input that arrives only at t_min (x = 0: a zero activation, or a padded tap) drives nothing before
    t_min, so the exact search and the certificate's gathered bound need not sort or sum it. A convolution on an input
    smaller than its kernel has whole columns of padded taps (Inception-v3's pooled branches at 80×80: 8 of every 9),
    a sparse layer many zero inputs. Kept whole when few columns would go. Shape: three (F, K) -> two (F, K')."""
    keep = live.any(0)
    kept = int(torch.count_nonzero(keep))
    if not kept or kept > 0.75 * keep.numel():
        return values, weights
    return values[:, keep], weights[:, keep]



def driving_groups(inputs, idx: tuple[Tensor, ...]) -> list[tuple[Tensor | None, list[int]]]:
    """The listed neurons grouped by the inputs that drive their channel: [(positions in idx, None for all; the
    inputs' indices)]. Each input of a concatenation drives its own channels only, so a neuron's fan-in is its own
    inputs', not the whole layer's: DenseNet's `relu1` layers read up to 25 inputs, one per channel slice (gathered
    whole, 24 of every 25 columns were zero weights). One group when every input drives every channel."""
    if all(syn.channels is None for syn in inputs) or len(inputs) > 62:
        return [(None, list(range(len(inputs))))]
    o = idx[1]
    signature = torch.zeros_like(o)
    for k, syn in enumerate(inputs):
        drives = torch.ones_like(o, dtype=torch.bool) if syn.channels is None else \
            (o >= syn.channels[0]) & (o < syn.channels[1])
        signature |= drives.long() << k
    if not bool(signature.all()):  # a channel no input drives: one group, as without channels
        return [(None, list(range(len(inputs))))]
    groups = []
    for sig in signature.unique().tolist():
        rows = (signature == sig).nonzero()[:, 0]
        groups.append((rows, [k for k in range(len(inputs)) if sig >> k & 1]))
    return groups


def largest_fan_in(inputs, shape: tuple[int, ...]) -> int:
    """The largest number of inputs one neuron of the layer sums over: the inputs that drive its channel (each
    input of a concatenation drives its own channels only, `driving_groups`)."""
    if all(syn.channels is None for syn in inputs):
        return sum(syn.J[0].numel() for syn in inputs)
    change = [0] * (shape[0] + 1)  # each input's fan-in added at its first channel, taken off after its last
    for syn in inputs:
        lo, hi = syn.channels if syn.channels is not None else (0, shape[0])
        change[lo] += syn.J[0].numel()
        change[hi] -= syn.J[0].numel()
    return max(itertools.accumulate(change[:-1]))
