// Pure helpers of the live timeline (no DOM, no Plotly): decoding the spec's typed arrays, the cells of a map panel,
// the mapping between a panel's own neuron order and the layer's flat indices, the "fired by" count of a layer at a
// step, and what a cell of a heat strip holds. ttfs_ui/live.py writes what these read; index.html loads this file
// before timeline.js, and tests/test_views_scale.py runs the same functions under node (when it is installed)
// against the Python that builds the spec.
"use strict";
(function (root) {
  const NEVER = 32767; // fire step of a neuron that never fires (B1's silent neurons)
  const TYPES = { u1: Uint8Array, u2: Uint16Array, i2: Int16Array, i4: Int32Array, f4: Float32Array };

  function bytesOf(text) {
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  // {dtype, bdata} -> a typed array. Two packed forms (live.steps_bytes, live.scaled): fire steps in one byte above
  // a `base` step (255: never) come back as an Int16Array of steps (NEVER for never); levels with a `scale` come
  // back as a Float32Array of values (level · scale).
  function decode(b) {
    const bytes = bytesOf(b.bdata);
    const Type = TYPES[b.dtype];
    if (!Type) throw new Error("unknown dtype " + b.dtype);
    const raw = new Type(bytes.buffer, 0, bytes.byteLength / Type.BYTES_PER_ELEMENT);
    if (b.base !== undefined) {
      const out = new Int16Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = raw[i] === 255 ? NEVER : raw[i] + b.base;
      return out;
    }
    if (b.scale !== undefined) {
      const out = new Float32Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = raw[i] * b.scale;
      return out;
    }
    return raw;
  }

  // The cells of a panel, row by row: for each, the index (in the panel's own order of neurons) of the neuron it
  // shows, or -1 in the gaps between maps. The bundled models' panels send them ("cells"); the others send their
  // layout: "grid" (k maps of h×w, gc to a row, as figures.grid tiles them), "square" (n neurons in rows of cols)
  // or "rgb" (one h×w image; cell i shows pixel i, whose channels are neurons i, h·w + i and 2·h·w + i).
  function panelCells(p) {
    if (p.cells) return p.cells;
    const L = p.layout;
    const cells = new Int32Array(L.rows * L.cols).fill(-1);
    if (L.kind === "grid") {
      const hw = L.h * L.w;
      for (let i = 0; i < L.k; i++) {
        const r0 = Math.floor(i / L.gc) * (L.h + 1), c0 = (i % L.gc) * (L.w + 1);
        for (let y = 0; y < L.h; y++) {
          const row = (r0 + y) * L.cols + c0, first = i * hw + y * L.w;
          for (let x = 0; x < L.w; x++) cells[row + x] = first + x;
        }
      }
    } else if (L.kind === "square") {
      for (let i = 0; i < L.n; i++) cells[i] = i;
    } else if (L.kind === "rgb") {
      for (let i = 0; i < L.h * L.w; i++) cells[i] = i;
    } else throw new Error("unknown panel layout " + L.kind);
    return cells;
  }

  // A neuron of the panel (its own order) -> its flat index in the layer, and back (-1: not shown).
  function flatOf(p, local) {
    const L = p.layout;
    if (!L || L.kind !== "grid") return local;
    const hw = L.h * L.w;
    return L.channels[Math.floor(local / hw)] * hw + (local % hw);
  }

  function localOf(p, flat) {
    const L = p.layout;
    if (!L || L.kind !== "grid") return flat >= 0 && flat < p.neurons ? flat : -1;
    const hw = L.h * L.w, i = L.channels.indexOf(Math.floor(flat / hw));
    return i < 0 ? -1 : i * hw + (flat % hw);
  }

  // The cell of every neuron of the panel (its own order), -1 if none; an RGB pixel's three channels share one.
  function cellOf(p, cells) {
    const out = new Int32Array(p.neurons).fill(-1);
    cells.forEach((local, cell) => { if (local >= 0) out[local] = cell; });
    if (p.layout && p.layout.kind === "rgb") {
      const hw = p.layout.h * p.layout.w;
      for (let i = hw; i < p.neurons; i++) out[i] = i % hw;
    }
    return out;
  }

  // How many neurons of layer n have fired by step k: from one count per step ("counts"), or from the span over
  // which the count changes ("count_spans": [lo, counts from step lo on]; 0 before, the last count after).
  function countAt(spec, n, k) {
    if (spec.counts) return spec.counts[n][k];
    const [lo, values] = spec.count_spans[n];
    if (k < lo) return 0;
    return values[Math.min(k - lo, values.length - 1)];
  }

  // What cell (row, bin) of a heat strip holds: its channels [lo, hi], its time bin [t0, t1), its spikes, and the
  // most active channel of the row (the one a click maps). `d.counts` and `d.top` decoded.
  function densityCell(d, row, bin) {
    return {
      lo: row * d.group, hi: Math.min((row + 1) * d.group, d.channels) - 1, t0: d.edges[bin], t1: d.edges[bin + 1],
      count: d.counts[row * d.bins + bin], top: d.top[row],
    };
  }

  // The y of the middle of channel c's row in a heat strip (where the raster rings a neuron of that layer).
  function densityY(d, channel) {
    const row = Math.floor(channel / d.group);
    return d.y[0] + (row + 0.5) * (d.y[1] - d.y[0]) / d.rows;
  }

  const api = { NEVER, decode, panelCells, flatOf, localOf, cellOf, countAt, densityCell, densityY };
  root.ttfsViews = api;
  if (typeof module === "object" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
