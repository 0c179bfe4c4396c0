"""Spiking dynamics (MATH.md §2, §6): pure functions on tensors.

The potential of a hidden neuron that starts at `start` = t_min^(n−1) is piecewise linear,

    V_i(t) = α (t − start) + Σ_j J_ij (t − t_j)⁺,

and the neuron fires when V first reaches θ_i, or is forced to fire at t_max^(n). Here are its first crossing
(closed form once every input has arrived, exact search over input segments otherwise), the potential at
given times, and max pooling on spike times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SEARCH_CHUNK = 1 << 21  # elements of (flagged neurons × fan-in) processed at once
FEW_POSITIONS = 64  # a float64 convolution with at most this many output positions per sample: `few_positions`
UNFOLD_ELEMENTS = 1 << 22  # kernel-window values `few_positions` unfolds at once (32 MiB in float64)


@dataclass(frozen=True)
class Pool:
    """Max pooling of activations, per channel as max (sign +1) or min (sign −1).

    A min appears where a BatchNorm with negative scale sits between the ReLU and the pool (MATH §5).
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    sign: Tensor | None = None  # (C,) of ±1; None = every channel takes the max

    @classmethod
    def of(cls, params: dict) -> Pool:
        """From a captured max-pool op's parameters (every channel takes the max)."""
        return cls(params["kernel_size"], params["stride"], params["padding"], params["dilation"], params["ceil_mode"])

    def _max(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def _signed(self, x: Tensor, plus_is_max: bool) -> Tensor:
        big = self._max(x) if plus_is_max else -self._max(-x)
        if self.sign is None or bool((self.sign > 0).all()):
            return big
        small = -self._max(-x) if plus_is_max else self._max(x)
        return torch.where(self.sign.reshape(1, -1, 1, 1) > 0, big, small)

    def activations(self, x: Tensor) -> Tensor:
        """Pool activations. Shape: (B, C, H, W) -> (B, C, H', W')."""
        return self._signed(x, plus_is_max=True)

    def times(self, t: Tensor) -> Tensor:
        """Pool spike times: the max of activations is the earliest spike (min of times). Shape as above."""
        return self._signed(t, plus_is_max=False)

    def flipped(self, scale: Tensor) -> Pool:
        """The same pool after moving a per-channel affine with this scale across it (negative → flip)."""
        s = torch.where(scale < 0, -1.0, 1.0).to(scale.dtype)
        return Pool(self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                    s if self.sign is None else self.sign * s)


def crossing_after_inputs(v_end: Tensor, theta: Tensor, slope: Tensor, t_end: float) -> Tensor:
    """First time V reaches θ on the last segment, where V(t) = V(t_end) + slope·(t − t_end)  (MATH §6).

    t* = t_end + (θ − V(t_end)) / slope; inf where the slope is not positive and V(t_end) < θ.
    Shape: all broadcast together.
    """
    t = (theta - v_end).div_(slope)
    if t_end:
        t += t_end
    if bool((slope > 0).all()):
        return t
    never = torch.where(v_end >= theta, torch.full_like(t, t_end), torch.full_like(t, torch.inf))
    return torch.where(slope > 0, t, never)


def first_crossing(
    times: Tensor, weights: Tensor, theta: Tensor, alpha: float, start: float, t_end: float, final_slope: Tensor
) -> Tensor:
    """Exact first threshold crossing of V(t) = α (t − start) + Σ_j J_j (t − t_j)⁺ for t < t_end, continued
    after t_end with slope `final_slope` (MATH §6, event-driven search).

    After the k-th input (sorted) the candidate is t* = (θ + α·start + Σ_{j≤k} J_j t_j)/(α + Σ_{j≤k} J_j),
    taken in the first segment [t_k, t_{k+1}] at whose end V ≥ θ (V is linear inside it and below θ at its
    start, so that segment holds the first crossing); if θ ≤ 0 the neuron fires at `start`.
    Returns +inf where V never reaches θ. Shape: times, weights (F, K) with times in [start, t_end]; theta,
    final_slope (F,) -> (F,).
    """
    ts, order = times.sort(dim=1)
    js = weights.gather(1, order)
    zero = torch.zeros_like(ts[:, :1])
    cum_j = torch.cat([zero, js.cumsum(1)], 1)  # (F, K+1): total weight arrived before segment k
    cum_jt = torch.cat([zero, js.mul_(ts).cumsum(1)], 1)
    upper = torch.cat([ts, torch.full_like(zero, t_end)], 1)
    # V at the end of each segment; the first end at or above θ closes the segment holding the first crossing
    if start:
        v_upper = alpha * (upper - start) + cum_j * upper - cum_jt
    else:  # the same, in fewer passes
        v_upper = (cum_j + alpha).mul_(upper).sub_(cum_jt)
    reached = v_upper >= theta[:, None]
    first = reached.to(torch.uint8).argmax(1, keepdim=True)
    hit = reached.any(1)
    # the candidate crossing in that segment only (one per neuron, not one per segment)
    cj, cjt, up = cum_j.gather(1, first)[:, 0], cum_jt.gather(1, first)[:, 0], upper.gather(1, first)[:, 0]
    low = torch.where(first[:, 0] > 0, ts.gather(1, (first - 1).clamp(min=0))[:, 0], torch.full_like(up, start))
    slope = alpha + cj
    cand = (theta + alpha * start + cjt) / slope
    t = torch.where(slope > 0, cand, up).maximum(low).minimum(up)
    # past the last input: V(t_end) from the segment sums, then the final slope
    v_end = alpha * (t_end - start) + cum_j[:, -1] * t_end - cum_jt[:, -1]
    t_after = crossing_after_inputs(v_end, theta, final_slope, t_end)
    t = torch.where(hit, t, t_after)
    return torch.where(theta <= 0, torch.full_like(t, start), t)


def gate_at_window_start(offsets: Tensor) -> tuple[Tensor, int]:
    """The gated neuron (MATH §2): its threshold is switched on only at t_min, so a neuron whose potential has
    reached θ by then fires at t_min (offset 0, the clipped value B_n) instead of early. The closed-form crossing
    after t_min is the spike otherwise; no early-spike search is needed. Returns the offsets and how many
    neurons saturated. Shape: any -> same."""
    saturated = offsets <= 0
    return offsets.clamp(min=0), int(torch.count_nonzero(saturated))


def settle_spikes(offsets: Tensor, window: float, silent_at_zero: bool,
                  early_arrivals: int) -> tuple[Tensor, dict[str, int]]:
    """A layer's final spikes and their statistics from its first-crossing offsets (from t_min).

    A neuron that has not crossed by t_max is forced to fire at t_max (α-model, MATH §2) or, `silent_at_zero`
    (`NeuronModel.silent_at_zero`), does not fire at all (B1, MATH §7: offset +inf); an offset below 0 is an early
    spike (`early_mask`). Shape: offsets any -> same.
    """
    stats = {"early_spikes": int(torch.count_nonzero(early_mask(offsets))), "early_arrivals": early_arrivals}
    if silent_at_zero:
        late = offsets >= window
        offsets = torch.where(late, torch.full_like(offsets, torch.inf), offsets)
        return offsets, {**stats, "forced": 0, "spikes": offsets.numel() - int(torch.count_nonzero(late))}
    offsets = offsets.clamp(max=window)  # finite now: `forced_mask` without its test for silent neurons
    return offsets, {**stats, "forced": int(torch.count_nonzero(offsets >= _as(window, offsets))),
                     "spikes": offsets.numel()}


def early_mask(offsets: Tensor) -> Tensor:
    """Which spikes are early: before the layer's own window opened (offset from t_min below 0; the input window
    had not closed, MATH §2). Works on tensors and numpy arrays. Shape: any -> same, bool."""
    return offsets < 0


def forced_mask(offsets: Tensor, window: float) -> Tensor:
    """Which neurons were forced to fire at t_max (activation 0; a silent B1 neuron, offset +inf, is not),
    compared in the offsets' own precision: a float32 forced offset is the window rounded to float32, which can
    lie just below the float64 window. Shape: settled offsets any -> same, bool."""
    return torch.isfinite(offsets) & (offsets >= _as(window, offsets))


def _as(value: float, like: Tensor) -> Tensor:
    """A number in a tensor's dtype and device (compared in that precision)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def membrane_potential(
    at: Tensor, times: Tensor, weights: Tensor, alpha: float, start: float, t_end: float | None = None,
    final_slope: float | None = None,
) -> Tensor:
    """V(t) of one neuron at the given times (MATH §2), before any reset: α (t − start) + Σ_j J_j (t − t_j)⁺.

    With `t_end` and `final_slope` (the B1 model, MATH §7) the slope is replaced by `final_slope` after t_end.
    Shape: at (T,), times and weights (K,) -> (T,).
    """
    rel = (at[:, None] - times[None, :]).clamp(min=0)
    if t_end is None:
        return alpha * (at - start).clamp(min=0) + rel @ weights
    inside = at.clamp(max=t_end)
    v = alpha * (inside - start).clamp(min=0) + (inside[:, None] - times[None, :]).clamp(min=0) @ weights
    return v + float(final_slope) * (at - t_end).clamp(min=0)


def part_shape(syn, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the part of a layer of `shape` that one input (`Synapses`) drives: its channels [lo, hi)."""
    if syn.channels is None:
        return shape
    return (syn.channels[1] - syn.channels[0], *shape[1:])


def weighted_sum(inputs, xs: list[Tensor], ws: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """Σ_k Σ_j w_kij x_kj for every neuron of a layer of `shape` over its inputs k (`Synapses`: geometry and the
    channels each drives), with the weights `ws[k]` in input k's layout (its W, its J, or a part of them), no
    bias. Shape: xs[k] (B, *in_shape k) -> (B, *shape)."""
    parts = [(syn.channels, product(syn, x, w, part_shape(syn, shape))) for syn, x, w in merged(inputs, xs, ws)]
    return place(parts, shape, xs[0])


def geometry(conv: dict) -> tuple:
    """A convolution's stride, padding and dilation (not its groups), hashable."""
    return tuple(sorted((key, tuple(v) if isinstance(v, (list, tuple)) else v) for key, v in conv.items()
                        if key != "groups"))


def merged(inputs, xs: list[Tensor], ws: list[Tensor]) -> list[tuple]:
    """(synapses, input, weights) per product `weighted_sum` computes: inputs that one product can serve are merged,
    their inputs and weights concatenated along the input channels, as the ANN's own `torch.cat` before its
    convolution does. Mergeable: ungrouped convolutions of one geometry (kernel, stride, padding, dilation) on inputs
    of one spatial size, or dense maps, that drive the same output channels (Inception's branches read by one
    layer). Measured on Inception-v3 at 80×80, batch 16, float32: run / ANN 42–43× -> 26–30×. The sum is the same
    up to the order of its terms.
    Shape: xs[k] (B, *in_shape k), ws[k] in input k's layout -> [(Synapses, (B, C, ...), weights)]."""
    if len(inputs) < 2:
        return list(zip(inputs, xs, ws))
    groups: dict[tuple, list[int]] = {}
    for k, (syn, x, w) in enumerate(zip(inputs, xs, ws)):
        if syn.conv is not None and syn.conv["groups"] == 1:
            key = ("conv", syn.channels, geometry(syn.conv), tuple(w.shape[2:]), tuple(x.shape[2:]))
        elif syn.conv is None and w.dim() == 2:
            key = ("dense", syn.channels)
        else:
            key = ("alone", k)
        groups.setdefault(key, []).append(k)
    out = []
    for key, ks in groups.items():
        if len(ks) == 1:
            out.append((inputs[ks[0]], xs[ks[0]], ws[ks[0]]))
        elif key[0] == "conv":
            out.append((inputs[ks[0]], torch.cat([xs[k] for k in ks], 1), torch.cat([ws[k] for k in ks], 1)))
        else:
            out.append((inputs[ks[0]], torch.cat([xs[k].flatten(1) for k in ks], 1),
                        torch.cat([ws[k] for k in ks], 1)))
    return out


def product(syn, x: Tensor, w: Tensor, part: tuple[int, ...]) -> Tensor:
    """`Synapses.apply`, except for a convolution of a 1×1 input (`one_position`) and two kinds of convolution
    PyTorch's CPU kernels run slowly in float64 (they have no oneDNN path there): one input channel per group
    (`depthwise`), and few output positions (`few_positions`)."""
    conv = syn.conv
    if conv is not None and x.shape[2:] == (1, 1) and w.shape[2:] != (1, 1):
        return one_position(x, w, conv, part)
    if conv is None or x.device.type != "cpu" or x.dtype != torch.float64:
        return syn.apply(x, w, part)
    if conv["groups"] > 1 and w.shape[1] == 1:
        return depthwise(x, w, conv)
    if conv["groups"] == 1 and math.prod(part[1:]) <= FEW_POSITIONS:
        return few_positions(x, w, conv, part)
    return syn.apply(x, w, part)


def one_position(x: Tensor, w: Tensor, conv: dict, part: tuple[int, ...]) -> Tensor:
    """A convolution of a 1×1 input (zero padding all around it) as the matrix product it is: each output position
    reads the input through at most one tap of the kernel, the one that lands on it. `ttfs_core.lower` writes an
    upsampling this way (a kernel as large as the output, the input padded to it: HRNet's fuse layers); a
    convolution would multiply every padded zero (measured on HRNet-W18-small's 16×16 relays in float64, 4 inputs:
    2.9 s against a few ms). Shape: x (B, C, 1, 1); w (O, C / groups, kh, kw); part (O, H', W') -> (B, *part)."""
    out_ch, cin_g, kh, kw = w.shape
    groups = conv["groups"]
    _, rows, cols = part

    def tap(count: int, stride: int, padding: int, dilation: int, size: int) -> tuple[Tensor, Tensor]:
        at = padding - torch.arange(count, device=x.device) * stride  # where the input lies, seen from each output
        index = torch.div(at, dilation, rounding_mode="floor")
        return index.clamp(0, size - 1), (at >= 0) & (at % dilation == 0) & (index < size)

    (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
    ty, vy = tap(rows, sh, ph, dh, kh)
    tx, vx = tap(cols, sw, pw, dw, kw)
    if rows == cols == 1 and groups == 1:  # one output position (a deep layer of a small input): one tap
        if not bool(vy[0] & vx[0]):
            return x.new_zeros(x.shape[0], out_ch, 1, 1)
        return F.linear(x.flatten(1), w[:, :, int(ty[0]), int(tx[0])]).reshape(x.shape[0], out_ch, 1, 1)
    taps = w[:, :, ty][:, :, :, tx] * (vy[:, None] & vx[None, :]).to(w.dtype)  # (O, C / groups, H', W')
    out = torch.einsum("bgc,gocn->bgon", x.reshape(x.shape[0], groups, cin_g),
                       taps.reshape(groups, out_ch // groups, cin_g, rows * cols))
    return out.reshape(x.shape[0], out_ch, rows, cols)


def few_positions(x: Tensor, w: Tensor, conv: dict, part: tuple[int, ...]) -> Tensor:
    """An ungrouped convolution as one matrix product over every sample's kernel windows (strided views of the
    padded input, copied once), in pieces of at most UNFOLD_ELEMENTS window values. PyTorch's float64 CPU
    convolution takes one product per sample, wasteful when a sample has few output positions: measured on one
    thread (CPU time), (64, 192, 4, 4) by a 3×3 kernel to 192 channels 62 ms there and 24 ms here, to 1280
    channels at stride 2 (2×2 positions) 231 ms and 50 ms, (64, 96, 8, 8) to 96 channels 36 ms and 30 ms.
    Shape: x (B, C, H, W); w (O, C, kh, kw); part (O, H', W') -> (B, *part)."""
    out_ch, rows, cols = part
    (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
    kh, kw = w.shape[2:]
    taps = w[0].numel()
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    # (B, C, H', W', kh, kw): every kernel window, a view
    windows = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    step = max(1, UNFOLD_ELEMENTS // (taps * rows * cols))
    outs = []
    for lo in range(0, x.shape[0], step):
        flat = windows[lo:lo + step].permute(1, 4, 5, 0, 2, 3).reshape(taps, -1)  # (C·kh·kw, samples·positions)
        outs.append((w.reshape(out_ch, taps) @ flat).reshape(out_ch, -1, rows, cols).transpose(0, 1))
    return torch.cat(outs) if len(outs) > 1 else outs[0].contiguous()


def depthwise(x: Tensor, w: Tensor, conv: dict) -> Tensor:
    """A convolution with one input channel per group (depthwise; a BatchNorm or an identity shortcut lowered to a
    1×1 one) as a sum over the kernel's taps of strided slices times one weight per output channel: the same sum
    as `F.conv2d`, whose float64 CPU path loops over groups and samples (measured on RepVGG-A0's identity
    branches, (64, 192, 4, 4) float64: ~7 ms a call on one quiet thread, up to 300 ms on two loaded ones, against
    0.1 ms here). Shape: x (B, G, H, W); w (O, 1, kh, kw), O a multiple of G -> (B, O, H', W')."""
    (sh, sw), (ph, pw), (dh, dw) = conv["stride"], conv["padding"], conv["dilation"]
    out_ch, _, kh, kw = w.shape
    if out_ch != x.shape[1]:  # a channel multiplier: output channel o reads input channel o // multiplier
        x = x.repeat_interleave(out_ch // x.shape[1], 1)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    rows = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = None
    for i in range(kh):  # a loop over the kernel's taps (at most kh·kw), each a whole-tensor multiply-add
        for j in range(kw):
            tap = x[:, :, i * dh:i * dh + (rows - 1) * sh + 1:sh, j * dw:j * dw + (cols - 1) * sw + 1:sw]
            weight = w[:, 0, i, j].reshape(1, -1, 1, 1)
            out = tap * weight if out is None else out.addcmul_(tap, weight)
    return out


def row_sums(inputs, ws: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """Σ_j w_ij per neuron over all inputs (zero-padded taps included), per output channel of a convolutional
    layer (the same at every position) or per neuron of a dense one. Shape: -> (C,) or (N,)."""
    return place_row_sums(inputs, [w.sum(tuple(range(1, w.dim()))) for w in ws], shape)


def place_row_sums(inputs, sums: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    """Per-input row sums (`sums[k]`: one per weight row of input k) added into the rows of the layer's output
    channels each input drives: `row_sums` from sums already at hand. Shape: -> (C,) or (N,)."""
    out = None
    for syn, part in zip(inputs, sums):
        if out is None:
            out = part.new_zeros(shape[0] if len(shape) == 3 else math.prod(shape))
        lo, hi = syn.channels if syn.channels is not None else (0, out.shape[0])
        out[lo:hi] += part
    return out


def place(parts: list[tuple[tuple[int, int] | None, Tensor]], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Sum per-input results of a layer, each covering the output channels [lo, hi) it drives (None: all), into
    one layer-shaped tensor. Shape: parts [(B, *part)] -> (B, *shape)."""
    out = None
    for channels, value in parts:
        if channels is None:
            out = value if out is None else out + value
            continue
        if out is None:
            out = value.new_zeros(value.shape[0], *shape)
        out[:, channels[0]:channels[1]] += value
    return out if out is not None else like.new_zeros(like.shape[0], *shape)


def search_in_chunks(gather, count: int, fan_in: int, solve, like: Tensor) -> Tensor:
    """Run `solve(*gather(lo, hi))` over flagged neurons in chunks bounded by SEARCH_CHUNK elements; no neuron gives
    an empty tensor of `like`'s dtype and device."""
    step = max(1, SEARCH_CHUNK // max(fan_in, 1))
    parts = [solve(*gather(lo, min(lo + step, count))) for lo in range(0, count, step)]
    return torch.cat(parts) if parts else like.new_empty(0)
