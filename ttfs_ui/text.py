"""Short explanations for newcomers, shown collapsed on every page. Equations follow MATH.md (time in τ_c).

Each entry is (expander title, Markdown with $…$ / $$…$$ LaTeX).
"""

EXPLANATIONS: dict[str, tuple[str, str]] = {
    "overview": ("What is this? (start here)", r"""
A **ReLU network** passes numbers (activations) from layer to layer. A **spiking network** passes *events in
time*. This app converts a trained ReLU network into a spiking one where every neuron fires **exactly one
spike**, and the *time* of that spike encodes the activation — **time-to-first-spike (TTFS)** coding, after
Stanojevic et al., *An exact mapping from ReLU networks to spiking neural networks* (2023).

Every layer $n$ owns a time window $[t_{\min}^{(n)}, t_{\max}^{(n)}]$ of length $B_n$; the windows follow each
other. A neuron with activation $x \ge 0$ fires at

$$t = t_{\max}^{(n)} - x \qquad\Longleftrightarrow\qquad x = t_{\max}^{(n)} - t,$$

so a **large activation fires early** and $x = 0$ fires at the end of the window. The mapping is *exact*: the
spiking network computes the same logits as the ReLU network (up to floating-point rounding).

**How to use it:** pick a model and an input here, then open the pages in the sidebar: the *spike raster*
(all spikes on one time axis), *membrane traces* (one neuron's voltage), *ANN vs SNN* (checks the exactness),
*robustness* (what quantised or noisy spike times and weights, and smaller windows, cost).
"""),
    "conversion": ("How the conversion works", r"""
Each hidden neuron $i$ of layer $n$ starts at $V=0$ when its input window opens, at $t_{\min}^{(n-1)}$, and
integrates a constant current $\alpha$ plus one step current $J_{ij}$ per input spike:

$$V_i(t) = \alpha\,(t - t_{\min}^{(n-1)}) + \sum_j J_{ij}\,(t - t_j)^+ .$$

It fires when $V_i$ reaches its threshold $\vartheta_i$, or is **forced** to fire at $t_{\max}^{(n)}$
(activation 0, the ReLU's zero). From the ReLU layer's weights $W$ and bias $b$ (with $\alpha = 1$):

$$J_{ij} = \frac{\alpha W_{ij}}{1 - \sum_k W_{ik}},$$

$$\vartheta_i = \alpha\,(t_{\max}^{(n)} - t_{\min}^{(n-1)}) + (B_n - b_i) \sum_j J_{ij} - \alpha\, b_i .$$

This needs $\sum_k W_{ik} < 1$, obtained by rescaling each neuron's weights by $c > 0$ and the weights that read
it by $1/c$ (ReLU is positively homogeneous, so the network computes the same function). Rescaling multiplies
the neuron's activation, and so its window, by $c$. The **paper's rule** (the default) rescales only where
$\sum_k W_{ik} \ge 0.99$, so windows stay of the order of the trained activations (a few $\tau_c$). The
**positive-part** rule $\sum_k \max(W_{ik}, 0) < 1$ is an opt-in fast mode: early spikes then need no
certificate, but trained layers have positive weight sums of 5–30, so windows shrink geometrically with depth.
BatchNorm is folded into the neighbouring layer; max pooling becomes
"the earliest spike wins".

**Windows** come from calibration data: $X_n$ is the largest activation of layer $n$ over 512 training images,
and $B_n = (1 + \zeta)\,X_n$ with safety margin $\zeta$ (default 0.5). The **decision latency** is the time at
which the output layer is read: $t_{\min}^{(L)} = 1 + \sum_{n<L} B_n$ (the input window is $[0, 1]$).
The output layer does not spike: its membrane potential at $t_{\min}^{(L)}$ *is* the logit vector.
"""),
    "raster": ("How to read the raster", r"""
Each dot is **one spike**: x = when it fired, y = which neuron (grouped by layer, the input at the bottom; one
colour per layer). Shaded bands are the layers' windows $[t_{\min}^{(n)}, t_{\max}^{(n)}]$. Within a band, dots on
the **left** are neurons with **large activations** ($x = t_{\max} - t$); the vertical line of dots at the right
edge of each band are neurons with activation 0, forced to fire at $t_{\max}$ (in the B1 neuron model they do
not fire at all, which saves spikes).

The **time cursor** (black line) splits what has happened (left) from what has not (grey). Step it with the
buttons, drag the slider or press *Play*: the raster, the counts above it and the feature maps below follow the
one cursor, drawn in your browser from this input's spike times (sent once), so nothing waits for the server.
Hover a dot or a map cell to find the same neuron in both views; click it to open its membrane trace.

**Time axis.** With the paper's rescaling (the default) the windows have comparable lengths, and the true time
axis, in units of $\tau_c$, is the default. With the positive-part fast mode windows shrink with depth (each
layer's activations are rescaled by $c < 1$), so on the true axis deep layers collapse to a thin line; the
*stretched* axis gives each window the same width (window $n$ is drawn on $[n, n+1]$, position
$n + (t - t_{\min}^{(n)})/B_n$): not to scale, but every layer's spike order is visible. It is the default
whenever windows differ by more than 10×.
"""),
    "feature_maps": ("How to read the feature maps", r"""
Left: the **input image**. Input pixel value $\hat x \in [0,1]$ fires at $t = 1 - \hat x$: bright pixels fire
first, so the digit appears stroke by stroke and the black background fills in at the end of the input window.

Right: the chosen layer's neurons (for convolutions: one small map per channel). A cell is grey until its neuron
fires; then it is coloured with the **decoded activation** $t_{\max}^{(n)} - t$ (the colour scale ends at $X_n$,
the calibration maximum). Neurons of a linear layer are tiled into a square.
"""),
    "membrane": ("How to read a membrane trace", r"""
The solid line is the neuron's **exact** membrane potential, piecewise linear with a kink at every input
spike (times relative to the moment the neuron starts integrating, $t_{\min}^{(n-1)}$):

$$V_i(t) = \alpha\,t + \sum_j J_{ij}\,(t - t_j)^+ .$$

Ticks underneath are the **input spikes**, up for excitatory ($J_{ij} > 0$) and down for inhibitory inputs,
height ∝ $|J_{ij}|$. The dashed line is the threshold $\vartheta_i$. The star marks the spike, where $V$ reaches
$\vartheta_i$; a cross marks a **forced** spike at $t_{\max}$ (activation 0). The blue band is the input
window (inputs arrive), the red band the neuron's own window (where a correct spike happens). A spike inside
the blue band would be an **early spike**, wrong by construction; it is shown in red.

The dotted staircase is the same neuron simulated **with a clock** of $S$ ticks per window
($V[k+1] = V[k] + \Delta t\, I[k]$, spikes on ticks): its spike time is off by up to one tick, $B_n/S$, and the
errors accumulate over layers.
"""),
    "ann_vs_snn": ("What is compared", r"""
For every spiking layer, each neuron's **ANN activation** (recorded from the original PyTorch model) against the
**SNN's decoded activation** $t_{\max}^{(n)} - t$ (divided by the rescaling factor, so both are in the original
model's units). The mapping is exact, so every point should sit on the dashed identity line; the differences
are floating-point rounding (float32 models: about $10^{-6}$).

**Early spikes.** The dynamics do not forbid a neuron from crossing threshold *before* all of its inputs have
arrived, $t < t_{\min}^{(n)}$; such a spike is wrong. Neuron $i$ fires early exactly when, for some $s$ in the
input window, $f_i(s) = b_i + \sum_j W_{ij} \max(x_j, s) - s \ge B_n$ ($s$ = time before $t_{\min}$). The
simulator proves $f_i < B_n$ for almost every neuron with a few weighted sums: on each cell $[a, c]$ of the input
window, $f_i \le \max(f_i(a), f_i(c))$ plus the most its inhibitory inputs can lift it above that chord. The few
neurons it cannot settle are searched exactly; the table above says how many, per layer. An early spike happens
when an input drives a layer harder than any calibration image did by more than the margin $\zeta$: lower
$\zeta$ in the conversion settings to provoke some, then open their traces.

**Agreement** is the fraction of inputs where SNN and ANN predict the same class (it needs no labels).
"""),
    "robustness": ("What the knobs do", r"""
The exact mapping assumes perfect spike times and weights. Hardware has neither; each chart changes one thing
and measures, over the first test digits, the SNN's **accuracy** and its **agreement** with the ANN (same
predicted class):

- **Spike-time quantisation**: every spike time is rounded to one of $2^{\text{bits}}$ levels spanning its
  window, $t \mapsto t_{\min} + \mathrm{round}\big((t - t_{\min})/\Delta\big)\,\Delta$ with
  $\Delta = B_n / (2^{\text{bits}} - 1)$.
- **Jitter**: Gaussian noise on every spike time, $t \mapsto t + \varepsilon$, $\varepsilon \sim
  \mathcal N(0, \sigma^2)$, with $\sigma$ in units of $\tau_c$ (the default) or of each window $B_n$. With the
  paper's rescaling windows are a few $\tau_c$ long; with the positive-part fast mode deep windows are far
  shorter, and a fixed $\sigma$ in $\tau_c$ destroys them first.
- **Weight quantisation** (default: *W per output channel*): the ANN's weights $W_{ij}$ (BatchNorm folded in) are
  rounded to $2^{\text{bits}-1}-1$ levels per sign with one scale per output channel (its largest $|W_{ij}|$), as
  quantised hardware does, and the spiking layer is converted from the rounded $W$ as before
  ($J_{ij} = \alpha W_{ij}/(1 - \sum_k W_{ik})$ and $\vartheta_i$): it computes the quantised ANN exactly; biases
  and windows are kept. The option *J per layer* rounds the synapses $J_{ij}$ themselves on one scale per layer:
  $J$ grows with $1/(1 - \sum_k W_{ik})$, so the few neurons with $\sum_k W_{ik}$ near 1 set the scale and most
  other synapses round to a few levels or to 0 (LeNet-5 stays near chance even at 8 bits).
- **Margin** $\zeta$: windows $B_n = (1 + \zeta)\,X_n$. A smaller window lowers the latency
  $1 + \sum_n B_n$ but lets strongly driven neurons fire **early** (red bars), which costs accuracy.
"""),
    "inspector": ("What the inspector shows", r"""
**The captured graph.** The converter traces the model (torch.fx) into a list of ops — convolutions, Linear,
BatchNorm, ReLU, pooling, flatten, additions, concatenations — and *lowers* them into spiking layers: a ReLU
closes a layer, and everything on the data path since the spikes it reads (the convolution or Linear, the
BatchNorm before or after the ReLU, max pooling, flatten) is **absorbed** into that layer's weights, bias and
spike routing. Linear ops between two ReLUs become one weighted sum; a max pooling becomes a routing of spike
times (the earliest spike; the *latest* in channels where a negative BatchNorm scale sits between the ReLU and the
pool). A layer that reads several layers (a residual addition) delays each source's spikes by
$t_{\min} - t_{\max}(\text{source})$ so they share one code.

**Rescaling.** Each neuron's incoming weights and bias are multiplied by $c > 0$ (and its outgoing ones by
$1/c$) so that $\sum_j W_{ij} < 1$: the converted activation is $c$ times the original.

**Windows.** $X_n$ is the largest activation of layer $n$ on the calibration images, $P_n \ge X_n$ the largest
drive before the window opens on a sample of them, $\max_i \max_s f_i(s)$ with
$f_i(s) = b_i + \sum_j W_{ij}\max(x_j, s) - s$, and $B_n = (1 + \zeta) X_n$, or $(1 + \zeta) P_n$ where $P_n$ is
larger still than $\max(1, 1 + \zeta) X_n$ (a ReLU6 layer: its clip). A neuron fires early exactly when
$f_i(s) \ge B_n$ for some $s$.
**Distance to an early spike:** $B_n - P_n$ on the calibration data (negative: some calibration input fires early),
and $B_n - \max_i z_i$ on the input shown, with $z_i = f_i(0^+)$ the pre-activation (only a bound from below on
$\max_s f_i(s)$, so this distance is an upper bound).

**The certificate** proves $f_i < B_n$ on the whole input window for almost every neuron with a few weighted sums
(a bound without any, then 1, 2, 4, … cells); the few neurons it cannot settle are searched exactly.
"""),
    "peers": ("How this comparison was made", r"""
Today's converters (SpikingJelly's `ann2snn`, sinabs' `from_model`, the SNN Toolbox) make a **rate code**: each
ReLU becomes an integrate-and-fire neuron whose firing *rate* over $T$ time steps approximates the activation,
after the weights are normalised so that a chosen activation (the largest, or the 99.9th percentile, on
calibration data) maps to the highest rate. The approximation improves with $T$, so accuracy costs time steps,
compute and spikes, and max pooling of rates is not the rate of the max.

Here every neuron fires **once**, and its spike time *is* its activation: $t = t_{\max} - x$ (MATH §1). The network
is exact after one pass, with at most one spike per neuron.

The curves come from `python -m bench peers`, which converts each bundled model with SpikingJelly 2.0's
`RateCodingRecipe` (modes *max* and *99.9 %*, channel-wise thresholds) and sinabs 3.1's `normalize_weights` (99.9th
percentile) + `from_model`, runs them for up to 512 steps with the image as a constant input current, and reads
accuracy, agreement with the ANN, spikes per neuron and compute time (against the ANN's forward on the same batch)
at $T$ = 8, 32, 128 and 512. The results ship with the app: no peer is needed to see them.
"""),
}


# --- notation in plain text (labels, tables, captions, figure text): never raw "t_min^(n−1)" -------------------
T_MIN_PREV = "tₘᵢₙ⁽ⁿ⁻¹⁾"  # when the neuron's input window opens (it starts integrating)
T_MIN = "tₘᵢₙ⁽ⁿ⁾"  # when its own window opens
T_MAX = "tₘₐₓ⁽ⁿ⁾"  # when its own window closes (activation 0 fires here)
T_MIN_SHORT, T_MAX_SHORT = "tₘᵢₙ", "tₘₐₓ"
_RAW = (("t_min^(n−1)", T_MIN_PREV), ("t_min^(n-1)", T_MIN_PREV), ("t_min^(n)", T_MIN), ("t_max^(n)", T_MAX),
        ("t_min", T_MIN_SHORT), ("t_max", T_MAX_SHORT))


def pretty(label: str) -> str:
    """`label` with raw notation written as a student reads it: t_min^(n−1) -> tₘᵢₙ⁽ⁿ⁻¹⁾, t_max^(n) -> tₘₐₓ⁽ⁿ⁾,
    t_min -> tₘᵢₙ (Unicode sub- and superscripts: they show the same in Streamlit's text, tables and Plotly's
    figures and in an exported SVG)."""
    for raw, nice in _RAW:
        label = label.replace(raw, nice)
    return label
