"""Table rows for the pages (pure: core results in, lists of dicts out)."""

from __future__ import annotations

import numpy as np

from ttfs_core.sim.result import merge_counts

from .text import T_MAX_SHORT, T_MIN_PREV
from .timeline import layer_label

# --- numbers as a student reads them: one formatter for every table and caption ---------------------------------
DIGITS = 6  # significant digits shown (the values keep every digit: sorting, copying and the tests read them)
NUMBER_FORMAT = f"%.{DIGITS}g"  # the same, for Streamlit's NumberColumn (sprintf syntax)


def sig(value, digits: int = DIGITS) -> str:
    """A number with `digits` significant digits, as every table shows it: 0.666667, 1.5e-07, 0 (never "-0"),
    "—" for a missing value; integers in full with thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


def float_columns(rows: list[dict]) -> list[str]:
    """The columns of `rows` that hold floats (None allowed), in order: those `number_config` formats."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [c for c in cols if any(isinstance(r.get(c), float) for r in rows)
            and all(r.get(c) is None or isinstance(r.get(c), (float, int)) and not isinstance(r.get(c), bool)
                    for r in rows)]


def number_config(rows: list[dict], column_config, **extra) -> dict:
    """Streamlit column configs that show every float column of `rows` with DIGITS significant digits
    (`column_config`: `st.column_config`; tables stay free of Streamlit). `extra`: other columns' configs."""
    out = {c: column_config.NumberColumn(format=NUMBER_FORMAT) for c in float_columns(rows)}
    out.update(extra)
    return out


def summary_rows(snn, result=None) -> list[dict]:
    """One row per spiking layer and the readout: what the conversion produced (and this input's spikes).

    "reads" names the layers each one reads ("input" for the first; two or more after a residual addition or a
    concatenation, with the delay that aligns their windows)."""
    rows = []
    per_layer = {lr.name: lr for lr in result.layers} if result is not None else {}
    for layer in snn.layers:
        lr = per_layer.get(layer.name)
        rows.append({
            "layer": layer_label(layer), "op": layer.op, "reads": snn.reads(layer),
            "output shape": "×".join(map(str, layer.shape)), "neurons": layer.neurons,
            "X_n": float(layer.max_activation),
            "window [t_min, t_max] (τ_c)": interval(layer.t_min, layer.t_max), "B_n (τ_c)": float(layer.window),
            "spikes": None if lr is None else int(lr.spikes),
            "forced (x = 0)": None if lr is None else int(lr.forced),
            "early": None if lr is None else int(lr.early_spikes),
        })
    out = snn.output
    rows.append({
        "layer": f"readout {out.name}", "op": out.op, "reads": snn.reads(out),
        "output shape": "×".join(map(str, out.shape)),
        "neurons": out.neurons, "X_n": None, "window [t_min, t_max] (τ_c)": f"read at t = {out.t_min:.6g}",
        "B_n (τ_c)": None, "spikes": None, "forced (x = 0)": None, "early": None,
    })
    return rows


def interval(lo: float, hi: float) -> str:
    """"[lo, hi]" with enough significant digits (6 to 17) that the two ends print differently: a deep window of
    the fast mode is 1e-12 τ_c wide at t ≈ 3 τ_c, and at 6 digits every such window printed as one point."""
    lo, hi = float(lo), float(hi)
    for digits in range(6, 18):
        a, b = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
        if a != b or lo == hi:
            return f"[{a}, {b}]"
    return f"[{lo!r}, {hi!r}]"


def logit_rows(ann: np.ndarray, snn: np.ndarray) -> list[dict]:
    """Per class: ANN logit, SNN logit (readout potential), difference. Shape: ann, snn (classes,)."""
    ann, snn = np.asarray(ann, dtype=np.float64).ravel(), np.asarray(snn, dtype=np.float64).ravel()
    return [{"class": c, "ANN logit": float(a), "SNN logit": float(s), "SNN − ANN": float(s - a)}
            for c, (a, s) in enumerate(zip(ann, snn))]


def error_rows(snn, comparisons) -> list[dict]:
    """Per spiking layer: the largest |SNN − ANN| (original units), where it happens, and early spikes."""
    rows = []
    for layer, c in zip(snn.layers, comparisons):
        # numpy in the tensors' own dtype (the same numbers as torch's, on one thread: see timeline._layer_spikes)
        ann = c.ann.detach().cpu().numpy().ravel()
        err = np.abs(c.snn.detach().cpu().numpy().ravel() - ann)
        j = int(err.argmax()) if err.size else 0
        idx = np.unravel_index(j, layer.shape)
        top = float(np.abs(ann).max()) if ann.size else 0.0
        rows.append({
            "layer": layer_label(layer), "neurons": layer.neurons, "max |SNN − ANN|": float(c.max_abs_error),
            "relative to max |ANN|": float(c.max_abs_error) / max(top, 1e-30),  # LayerComparison.max_rel_error
            "at neuron": "(" + ", ".join(map(str, idx)) + ")",
            "ANN there": float(ann[j]) if err.size else 0.0,
            "early spikes": int(c.early_spikes),
        })
    return rows


def trace_rows(traces, labels) -> list[dict]:
    """Per traced neuron: threshold, spike time (relative to its start and absolute), decoded activation, and the
    clock-driven spike time when there is one."""
    rows = []
    for tr, label in zip(traces, labels):
        spike = float(tr.spike_time)
        row = {"neuron": label, "inputs": int(tr.input_times.numel()),
               "θ": None if tr.theta is None else float(tr.theta)}
        if tr.theta is None:
            row["logit (V at readout)"] = float(tr.potential_at(np.array([float(tr.t_min)]))[0])
        else:
            row.update({
                f"spike t − {T_MIN_PREV}": spike if np.isfinite(spike) else None,
                "spike t (absolute)": float(tr.origin) + spike if np.isfinite(spike) else None,
                # a forced spike's value is the ReLU's 0 by definition; t_max − t in float32 would read 2e-07
                f"activation {T_MAX_SHORT} − t": 0.0 if tr.forced or not np.isfinite(spike) else
                float(tr.t_max) - spike,
                "forced": bool(tr.forced), "early": bool(tr.early),
            })
            if tr.stepped_spike_time is not None:
                stepped = float(tr.stepped_spike_time)
                row["spike with a clock"] = stepped if np.isfinite(stepped) else None
                row["clock error"] = stepped - spike if np.isfinite(stepped) and np.isfinite(spike) else None
        rows.append(row)
    return rows


def evaluation_summary(report) -> dict:
    """Accuracy of ANN and SNN, their agreement, early spikes and spikes per neuron, as the verification report of
    the evaluated test images counts them (`ttfs_core.verify.Report`, merged over chunks)."""
    layers = report.layers
    labelled, neurons = max(report.labelled, 1), sum(la.neurons for la in layers)
    return {
        "images": report.images,
        "ANN accuracy": report.ann_correct / labelled,
        "SNN accuracy": report.snn_correct / labelled,
        "agreement": report.agree / max(report.images, 1),
        "disagreements": list(report.disagreements),  # the smallest verify.MAX_LISTED
        "early spikes": report.early,
        "spikes per neuron": report.spikes_per_neuron,
        "neurons": neurons,
        "certificate": dict(merge_counts(la.certificate for la in layers)),
        "searched": sum(la.searched for la in layers),
    }


def certificate_rows(snn, result) -> list[dict]:
    """Per spiking layer: its window, and how its neurons were proved free of early spikes for this input:
    the neurons each certificate stage settled (MATH §2), those searched exactly, and the early spikes found.

    Stages that settled no neuron of any layer are left out (`CERTIFICATE_HELP` says what each stage is), so the
    table fits the page without scrolling sideways."""
    rows = []
    used = {name for lr in result.layers for name, count in lr.certificate if count}
    for layer, lr in zip(snn.layers, result.layers):
        row = {"layer": layer_label(layer), "B_n (τ_c)": float(layer.window), "neurons": int(lr.neurons)}
        row.update({f"settled by {name}": int(count) for name, count in lr.certificate if name in used})
        row.update({"searched exactly": int(lr.searched), "early spikes": int(lr.early_spikes)})
        rows.append(row)
    return rows


CERTIFICATE_HELP = {
    "settled by no weighted sum": "Proved free of early spikes by a bound that needs no weighted sum (MATH §2).",
    "searched exactly": "Not settled by the certificate: the first threshold crossing was searched exactly over "
                        "the neuron's input segments. On one image the search takes over as soon as the neurons "
                        "left × their fan-in fall below a size budget, so its share can be large here.",
    "early spikes": "Neurons that fired before their window opened (wrong spikes).",
}


def certificate_help(column: str) -> str:
    """The help of a certificate table column (a stage of k cells: what a cell is)."""
    if column in CERTIFICATE_HELP:
        return CERTIFICATE_HELP[column]
    if column.startswith("settled by "):
        return (f"Proved free of early spikes on {column.removeprefix('settled by ')} of the input window: on each "
                "cell V − θ lies below its chord plus the most the inhibitory inputs can lift it.")
    return ""


def early_rows(early, snn) -> list[dict]:
    """Every recorded early spike (`ttfs_ui.cache.evaluate_chunk`): test image, layer, neuron index and how early
    it fired.

    Sorted by how early, the earliest first (the most negative offset from the window's start; ties in image, then
    layer order)."""
    labels = {layer.name: layer_label(layer) for layer in snn.layers}
    rows = [{**row, "layer": labels.get(row["layer"], row["layer"]), "layer name": row["layer"]} for row in early]
    return sorted(rows, key=lambda r: -float(r["early by (τ_c)"]))  # stable: equal ones keep image order


def comparison_data(snn, comparisons, only: list[int] | None = None
                    ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Layer labels and flat float64 arrays of ANN activations, SNN decoded activations and SNN − ANN; of the
    layers at positions `only` (None: all)."""
    keep = range(len(comparisons)) if only is None else only
    layers, comparisons = list(snn.layers), list(comparisons)
    names = [layer_label(layers[i]) for i in keep]
    ann = [comparisons[i].ann.detach().cpu().numpy().ravel().astype(np.float64) for i in keep]
    out = [comparisons[i].snn.detach().cpu().numpy().ravel().astype(np.float64) for i in keep]
    return names, ann, out, [s - a for a, s in zip(ann, out)]


def default_layers(errors: list[float], most: int = 8) -> list[int]:
    """Which of a deep network's layers its ANN-vs-SNN page plots first: the first and the last, the one with the
    largest error, and others evenly spaced, `most` in all, in network order. Shape: errors (layers,)."""
    n = len(errors)
    if n <= most:
        return list(range(n))
    pick = {0, n - 1, int(np.argmax(errors))}
    for i in np.linspace(0, n - 1, most).round().astype(int):
        if len(pick) >= most:
            break
        pick.add(int(i))
    return sorted(pick)[:most]


def sweep_rows(points) -> list[dict]:
    """One row per setting of a robustness sweep (`ttfs_core.robustness.SweepPoint`)."""
    return [{"setting": p.value, "SNN accuracy": p.accuracy, "agreement with the ANN": p.agreement,
             "early spikes": p.early_spikes, "spikes per neuron": p.spikes_per_neuron} for p in points]


def early_spikes_here(snn, result, comparisons, sample: int = 0, limit: int = 200) -> tuple[list[dict], int]:
    """The early spikes of one input (`result`, `comparisons` = `ttfs_core.compare` of it), the earliest first (the
    most negative offset t − t_min), at most `limit` of them, and how many there are in all. Each: layer label,
    neuron index, its window (absolute τ_c), the simulated spike time, how early it was, the ANN's activation
    (original units) and the right spike time t_max − c·x (c: the neuron's rescaling factor, so c·x is the value in
    the SNN's units; before t_min when it exceeds the window). Ranked with arrays; rows are built for the kept."""
    parts = []
    for n, (layer, lr, c) in enumerate(zip(snn.layers, result.layers, comparisons)):
        if not int(lr.early_spikes):
            continue
        off = lr.offsets[sample].detach().cpu().double().numpy().ravel()
        idx = np.flatnonzero(off < 0)  # dynamics.early_mask: fired before the window opened
        if idx.size:
            scale = np.broadcast_to(layer.scale.detach().cpu().double().numpy(), tuple(layer.shape)).ravel()[idx]
            ann = c.ann[sample].detach().cpu().double().numpy().ravel()[idx]
            parts.append((np.full(idx.size, n), idx, off[idx], ann, scale))
    if not parts:
        return [], 0
    layer_n, idx, off, ann, scale = (np.concatenate(p) for p in zip(*parts))
    keep = np.lexsort((idx, layer_n, off))[:limit]  # the most negative offset first; ties in layer, index order
    layers, results = list(snn.layers), list(result.layers)
    rows = []
    for n, j, o, a, s in zip(layer_n[keep].tolist(), idx[keep].tolist(), off[keep].tolist(), ann[keep].tolist(),
                             scale[keep].tolist()):
        layer, lr = layers[n], results[n]
        t_min, t_max = float(lr.t_min), float(lr.t_max)
        rows.append({"layer": layer_label(layer), "index": "(" + ", ".join(map(str, np.unravel_index(j, layer.shape)))
                     + ")", "neuron": j, "t_min": t_min, "t_max": t_max, "spike": t_min + o, "early by": -o,
                     "ann": a, "right": t_max - a * s})
    return rows, int(off.size)
