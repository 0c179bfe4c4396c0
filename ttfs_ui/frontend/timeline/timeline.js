// The spike raster and the feature maps on one time cursor, run in the browser (ttfs_ui/live.py builds the spec).
//
// The server sends one digit's spikes once: both figures, and per neuron the first cursor step at which it has
// fired (computed in Python by Timeline.fire_steps). Every cursor step after that is drawn here, with no server
// round trip: the cursor line on the raster, the "fired by" counts, and the feature maps filling in. Clicking a
// neuron (a raster dot or a map cell) sends {layer, neuron, cursor} back to the page, which opens its trace.
// A network too big for one dot per spike (ResNet-50 at 224×224) draws its large layers as heat strips (spikes per
// channel and time bin, "density" in the spec); clicking a strip sends {layer, channel, cursor}: the page maps that
// channel, and a click on one of its cells opens a neuron's trace as before. Its map panels may be compact (cells
// rebuilt here from their layout, steps in a byte) or an RGB input: views.js decodes them.
// For a lecture: Reveal hides every spike after the cursor (the rectangle after it turns opaque), so that Play, at the
// speed picked beside it, shows the raster filling in; a dot's tooltip (#tip, the page's own: Plotly's would say
// "x =" on a stretched axis) gives its neuron as (channel, row, col), its spike time t in τ_c and its ANN activation;
// a second counts line (#compare) puts the α-model and B1 side by side on the same input; PNG, SVG and Animation
// download the view for slides (export.js). No button uploads anything (Plotly's cloud buttons are removed).
// Streamlit's component protocol (v1) is spoken directly: componentReady, render, setFrameHeight, setComponentValue.
"use strict";

const V = window.ttfsViews; // views.js: decoding, cells of a panel, counts, heat-strip cells
const NEVER = V.NEVER; // fire step of a neuron that never fires (B1's silent neurons)
const FRAME_MS = 1000 / 30; // Play: at most 30 frames per second
const DEFAULT_SPEED = 30; // Play's steps per second by default: one step a frame
const REVEAL_FILL = "rgba(255,255,255,1)"; // Reveal: the rectangle after the cursor hides what it covers

const stats = { paints: [], frames: 0, playStart: null, playStop: null, renders: 0, builds: 0, spec: null, linked: 0,
                exports: [] };
window.ttfsTimeline = stats;

let spec = null;
let k = 0;
let playing = false;
let painting = false;
let wanted = null; // a step requested while a paint was in flight: painted right after it
let reveal = false; // spikes after the cursor hidden
let speed = DEFAULT_SPEED; // Play: cursor steps per second
const el = (id) => document.getElementById(id);

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*");
}

function unravel(shape, flat) {
  const idx = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(flat % shape[d]);
    flat = Math.floor(flat / shape[d]);
  }
  return "(" + idx.join(", ") + ")";
}

// --- one cursor step ------------------------------------------------------------------------------------------
function cursorShapes(step) {
  const x = spec.cursor_x[step];
  const [rect, line] = spec.cursor_shapes;
  const out = [];
  if (x < spec.x_end) out.push(Object.assign({}, rect, { x0: x }, reveal ? { fillcolor: REVEAL_FILL, opacity: 1 } : {}));
  out.push(Object.assign({}, line, { x0: x, x1: x }));
  return out;
}

// --- the feature maps: cells painted on canvases under the (transparent) Plotly figure ----------------------------
// Restyling a Plotly heatmap re-encodes it as an image (~25 ms a step on 2 cores); a canvas of one pixel per cell,
// scaled by CSS, repaints in well under a millisecond. The figure above it keeps the axes, the titles, the colour
// bar, hover (its heatmaps are transparent, every neuron fired) and the hovered cell's outline.
let probe = null;
function rgba(colour) {
  // any CSS colour -> [r, g, b, a], as the browser reads it
  probe = probe || document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  probe.clearRect(0, 0, 1, 1);
  probe.fillStyle = colour;
  probe.fillRect(0, 0, 1, 1);
  return probe.getImageData(0, 0, 1, 1).data;
}

function colourTable(scale) {
  // 256 RGBA entries along a Plotly colour scale ([[fraction, colour], ...]), interpolated linearly in RGB
  const stops = scale.map(([f, c]) => [Number(f), rgba(c)]);
  const out = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const f = i / 255;
    let j = 1;
    while (j < stops.length - 1 && stops[j][0] < f) j++;
    const [f0, c0] = stops[j - 1], [f1, c1] = stops[j];
    const u = f1 > f0 ? Math.min(1, Math.max(0, (f - f0) / (f1 - f0))) : 0;
    for (let q = 0; q < 3; q++) out[4 * i + q] = c0[q] + (c1[q] - c0[q]) * u;
    out[4 * i + 3] = 255;
  }
  return out;
}

const axisName = (ref) => ref.replace(/^x/, "xaxis").replace(/^y/, "yaxis"); // "x2" -> "xaxis2"

function canvas(p, id) {
  const c = document.createElement("canvas");
  c.id = id;
  c.width = p.cols;
  c.height = p.rows;
  c.className = "cells";
  el("cells").appendChild(c);
  return c;
}

function setUpMaps() {
  // per panel: a static canvas of "not fired" cells, one painted every step, and each neuron's colour entry
  const gd = el("maps");
  el("cells").replaceChildren();
  spec.panels.forEach((p, i) => {
    if (p.kind !== "rgb") { // an RGB input's "act" are its colour levels already
      const trace = gd._fullData[p.trace];
      const lut = colourTable(trace.colorscale);
      const lo = trace.zmin, span = Math.max(trace.zmax - trace.zmin, 1e-30);
      p.bin = new Uint8Array(p.neurons);
      for (let f = 0; f < p.neurons; f++) p.bin[f] = Math.round(255 * Math.min(1, Math.max(0, (p.act[f] - lo) / span)));
      p.lut = lut;
    }
    const back = canvas(p, `cells-bg-${i}`), front = canvas(p, `cells-${i}`);
    const grey = rgba(spec.not_fired), bg = back.getContext("2d").createImageData(p.cols, p.rows);
    p.cells.forEach((f, cell) => { if (f >= 0) bg.data.set([grey[0], grey[1], grey[2], 255], 4 * cell); });
    back.getContext("2d").putImageData(bg, 0, 0);
    p.canvases = [back, front];
    p.ctx = front.getContext("2d");
    p.pixels = p.ctx.createImageData(p.cols, p.rows);
  });
  placeMaps();
}

function placeMaps() {
  // the canvases over the heatmaps' cells [-0.5, cols - 0.5] × [-0.5, rows - 0.5], wherever the axes put them
  const layout = el("maps")._fullLayout;
  if (!spec || !layout) return;
  for (const p of spec.panels) {
    const xa = layout[axisName(p.xref)], ya = layout[axisName(p.yref)];
    if (!xa || !ya || !p.canvases) continue;
    const xs = [xa.l2p(-0.5), xa.l2p(p.cols - 0.5)].map((v) => v + xa._offset);
    const ys = [ya.l2p(-0.5), ya.l2p(p.rows - 0.5)].map((v) => v + ya._offset);
    for (const c of p.canvases) {
      Object.assign(c.style, { left: `${Math.min(...xs)}px`, top: `${Math.min(...ys)}px`,
                               width: `${Math.abs(xs[1] - xs[0])}px`, height: `${Math.abs(ys[1] - ys[0])}px` });
    }
  }
}

function fillRGB(p, step) {
  // an RGB input: each channel of a pixel shows its level once it has fired; pixels with none fired transparent
  const px = p.pixels.data, { kfire, act } = p, hw = p.layout.h * p.layout.w;
  let shown = 0;
  for (let i = 0; i < hw; i++) {
    const o = 4 * i;
    let any = false;
    for (let c = 0; c < 3; c++) {
      const f = c * hw + i;
      if (kfire[f] <= step) {
        px[o + c] = act[f];
        any = true;
      } else px[o + c] = 0;
    }
    px[o + 3] = any ? 255 : 0;
    if (any) shown++;
  }
  p.ctx.putImageData(p.pixels, 0, 0);
  p.shown = shown;
}

function fillMap(p, step) {
  // cells of neurons fired by `step` in their colour, the others transparent (the grey canvas shows through)
  if (p.kind === "rgb") return fillRGB(p, step);
  const px = p.pixels.data, { cells, kfire, bin, lut } = p;
  let shown = 0;
  for (let i = 0; i < cells.length; i++) {
    const f = cells[i], o = 4 * i;
    if (f >= 0 && kfire[f] <= step) {
      const b = 4 * bin[f];
      px[o] = lut[b];
      px[o + 1] = lut[b + 1];
      px[o + 2] = lut[b + 2];
      px[o + 3] = 255;
      shown++;
    } else px[o + 3] = 0;
  }
  p.ctx.putImageData(p.pixels, 0, 0);
  p.shown = shown;
}

function countsText(step) {
  const num = (v) => v.toLocaleString("en");
  if (spec.counts) {
    return "Fired by the cursor: " + spec.count_labels.map((label, n) =>
      `${label} ${num(spec.counts[n][step])}/${num(spec.neurons[n])}`).join(" · ");
  }
  // dozens of layers: the total, then the layers still firing at this step
  let fired = 0, total = 0;
  const now = [];
  spec.count_labels.forEach((label, n) => {
    const c = V.countAt(spec, n, step), [lo, values] = spec.count_spans[n];
    fired += c;
    total += spec.neurons[n];
    if (step >= lo && step < lo + values.length - 1) now.push(`${label} ${num(c)}/${num(spec.neurons[n])}`);
  });
  return `Fired by the cursor: ${num(fired)} of ${num(total)} neurons` + (now.length ? " · firing: " + now.join(" · ") : "");
}

// The same input under the other neuron model (spec.compare: B1 beside the α-model, on its own windows, at the same
// point of each window): "conv 0 α 4,704/4,704 · B1 1,897/4,704 (2,807 silent)"; B1's silent neurons never fire.
function compareText(step) {
  const c = spec.compare;
  if (!c) return "";
  const num = (v) => v.toLocaleString("en"), other = { counts: null, count_spans: c.count_spans };
  const last = spec.steps;
  const part = (name, src, n) => {
    const total = spec.neurons[n], now = V.countAt(src, n, step), silent = total - V.countAt(src, n, last);
    return `${name} ${num(now)}/${num(total)}` + (name === "B1" && silent > 0 ? ` (${num(silent)} silent)` : "");
  };
  const layers = spec.count_labels.map((label, n) => (n === 0 ? null
    : `${label} ${part(c.this, spec, n)} · ${part(c.other, other, n)}`)).filter((t) => t);
  return `${c.this} beside ${c.other} on this input: ` + layers.join(" | ");
}

function paint(step, t0) {
  k = Math.max(0, Math.min(spec.steps, step));
  el("slider").value = k;
  el("label").textContent = spec.labels[k];
  el("counts").textContent = countsText(k);
  el("compare").textContent = compareText(k);
  painting = true;
  for (const p of spec.panels) fillMap(p, k);
  return Plotly.relayout(el("raster"), { shapes: cursorShapes(k) }).then(() => new Promise((resolve) => {
    requestAnimationFrame(() => {
      stats.paints.push(performance.now() - t0);
      painting = false;
      if (wanted !== null) {
        const [w, t] = wanted;
        wanted = null;
        paint(w, t).then(resolve);
      } else resolve();
    });
  }));
}

function go(step, t0) {
  if (!spec) return;
  if (painting) wanted = [step, t0];
  else paint(step, t0);
  remember();
}

// --- the cursor in the page's link ---------------------------------------------------------------------------
// Once the cursor has rested for LINK_MS (never during Play), its step goes to the page once, so that the page's
// URL ("t=") and the membrane page show the same instant; Reveal and Play's speed go with it ("reveal=", "speed="),
// so that a link copied for a lecture opens the raster as it was shown. Steps and Play themselves never reach the
// server.
const LINK_MS = 1000;
let linkTimer = null;
let linked = null; // what the page's link holds: "cursor/reveal/speed"
const view = () => `${k}/${reveal ? 1 : 0}/${speed}`;
function remember() {
  clearTimeout(linkTimer);
  linkTimer = setTimeout(() => {
    if (playing || view() === linked) return;
    linked = view();
    stats.linked += 1;
    send("streamlit:setComponentValue", { value: { cursor: k, reveal: reveal ? 1 : 0, speed: speed,
                                                   seq: `c${Date.now()}-${Math.random()}` }, dataType: "json" });
  }, LINK_MS);
}

// --- Play -----------------------------------------------------------------------------------------------------
function stop() {
  playing = false;
  stats.playStop = performance.now();
  el("play").textContent = "▶ Play";
  el("play").classList.remove("playing");
  remember();
}

function play() {
  if (playing) return stop();
  playing = true;
  el("play").textContent = "❚❚ Pause";
  el("play").classList.add("playing");
  if (k >= spec.steps) k = 0;
  stats.frames = 0;
  stats.playStart = performance.now();
  stats.playStop = null;
  let last = -Infinity;
  const loop = (now) => {
    if (!playing) return;
    const every = Math.max(FRAME_MS, 1000 / speed), by = Math.max(1, Math.round(speed * FRAME_MS / 1000));
    if (now - last >= every - 1 && !painting) {
      last = now;
      if (k >= spec.steps) return stop();
      stats.frames += 1;
      paint(Math.min(spec.steps, k + by), now);
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

// --- linked views ---------------------------------------------------------------------------------------------
function neuronAt(source, pt) {
  // (layer n, flat index) of a hovered or clicked point, or null
  if (source === "raster") {
    const n = spec.trace_layer[pt.curveNumber];
    if (n === undefined || n < 0) return null;
    const c = pt.customdata;
    return [n, Math.round(c !== null && typeof c === "object" ? c[0] : c)];  // a row (typed) or one index
  }
  const panel = spec.panels.find((p) => p.trace === pt.curveNumber);
  if (!panel || !Array.isArray(pt.pointNumber)) return null;
  const [r, c] = pt.pointNumber;
  const local = panel.cells[r * panel.cols + c];
  return local >= 0 ? [panel.layer, V.flatOf(panel, local)] : null;
}

function densityAt(pt) {
  // the heat-strip cell under the pointer: {d, n, cell} (views.js densityCell), or null
  const d = (spec.density || []).find((e) => e.trace === pt.curveNumber);
  if (!d || !Array.isArray(pt.pointNumber)) return null;
  const [row, bin] = pt.pointNumber;
  return { d, n: d.layer, cell: V.densityCell(d, row, bin) };
}

function densityText(hit) {
  const { n, cell } = hit, label = spec.count_labels[n];
  const which = cell.lo === cell.hi ? `channel ${cell.lo}` : `channels ${cell.lo}–${cell.hi}`;
  const fmt = (t) => Number(t).toPrecision(4);
  return `${label} ${which} · ${fmt(cell.t0)} ≤ x < ${fmt(cell.t1)}: ${cell.count.toLocaleString("en")} spikes` +
    (spec.traceable[n] ? ` · click to map channel ${cell.top}` + (cell.lo === cell.hi ? "" : " (the row's most active)") : "");
}

function channelOf(n, flat) {
  const shape = spec.shapes[n];
  const per = shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : 1;
  return Math.floor(flat / per);
}

function valueText(panel, local) {
  // what the browser knows of a neuron beyond its index: compact panels their (16- or 8-bit) activation, RGB pixels
  // their colour; the bundled models' panels say it in the map's own hover label
  if (!panel || local < 0 || panel.kind === undefined) return "";
  if (panel.kind === "rgb") {
    const hw = panel.layout.h * panel.layout.w, i = local % hw;
    return ` · RGB ${panel.act[i]}, ${panel.act[hw + i]}, ${panel.act[2 * hw + i]}`;
  }
  return ` · activation ≈ ${Number(panel.act[local]).toPrecision(4)}` + (panel.kfire[local] >= NEVER ? " (no spike)" : "");
}

// --- the raster's tooltip: a readable index, the spike time in τ_c, the ANN activation -------------------------------
function readable(n, flat) {
  // "channel 2, row 10, col 11" for a map, "pixel (row 3, col 4)" for a one-channel input, "neuron 17" for a vector
  const shape = spec.shapes[n];
  if (shape.length === 3) {
    const [, h, w] = shape, c = Math.floor(flat / (h * w)), r = Math.floor(flat / w) % h, x = flat % w;
    if (n === 0) return shape[0] === 1 ? `pixel (row ${r}, col ${x})` : `channel ${c}, pixel (row ${r}, col ${x})`;
    return `neuron (channel ${c}, row ${r}, col ${x})`;
  }
  return shape.length === 1 ? `neuron ${flat}` : `neuron ${unravel(shape, flat)}`;
}

function timeOf(n, x) {
  // the absolute time (τ_c) of a dot of layer n at x: on the stretched axis a position inside window n (or n − 1,
  // an early spike) is mapped back through that window's start and length
  if (spec.mode !== "stretched") return x;
  const w = n > 0 && x < n ? n - 1 : n;
  return spec.starts[w] + (x - w) * spec.windows[w];
}

function tipText(n, flat, pt) {
  const fmt = (v) => {
    const t = Number(v).toPrecision(5);
    return t.includes("e") ? t.replace(/\.?0+e/, "e") : t.includes(".") ? t.replace(/\.?0+$/, "") : t;
  };
  const c = pt.customdata, row = c !== null && typeof c === "object" ? c : null;
  const lines = [`${spec.count_labels[n]} ${readable(n, flat)}`, `spike at t = ${fmt(timeOf(n, pt.x))} τ_c`];
  const vals = spec.activations && spec.activations[n];
  if (n === 0 && row) lines.push(`pixel value x̂ = ${fmt(row[1])} (its spike: t = 1 − x̂)`);
  else if (vals) lines.push(`ANN activation ${fmt(vals.ann[flat])} · decoded from the spike ${fmt(vals.snn[flat])}`);
  else if (row) lines.push(`activation t_max − t = ${fmt(row[1])} τ_c`);
  if (row && row[2]) lines.push("forced spike at t_max: activation 0");
  if (!row) lines.push("EARLY spike: before all its inputs had arrived");
  return lines.join("\n");
}

function showTip(text, event) {
  const tip = el("tip");
  if (!text) { tip.style.display = "none"; tip.textContent = ""; return; }
  tip.textContent = text;
  tip.style.display = "block";
  if (event && Number.isFinite(event.clientX)) {
    const x = event.clientX + 14, y = event.clientY + 14;
    const width = (document.documentElement && document.documentElement.clientWidth) || 1e9;
    tip.style.left = `${Math.max(0, Math.min(x, width - 320))}px`;
    tip.style.top = `${y + ((window.scrollY) || 0)}px`;
  }
}

function hidden(pt) {
  // Reveal: a dot after the cursor is hidden, and tells nothing on hover
  return reveal && Number.isFinite(pt.x) && pt.x > spec.cursor_x[k] + 1e-12;
}

function highlight(target) {
  if (!target) {
    showTip(null);
    Plotly.restyle(el("raster"), { x: [[]], y: [[]] }, [spec.highlight_trace]);
    Plotly.relayout(el("maps"), { shapes: [] });
    el("hovered").textContent = "";
    return;
  }
  const [n, flat] = target;
  const panel = spec.panels.find((p) => p.layer === n);
  const shapes = [];
  let x = null;
  const local = panel ? V.localOf(panel, flat) : -1;
  if (local >= 0) {
    const cell = panel.cellOf[local];
    const r = Math.floor(cell / panel.cols), c = cell % panel.cols;
    shapes.push({ type: "rect", xref: panel.xref, yref: panel.yref, x0: c - 0.5, x1: c + 0.5, y0: r - 0.5,
                  y1: r + 0.5, line: { color: "#ff2b2b", width: 2.5 } });
    // a compact panel has no raster x: its fire step's x stands for it (within a step)
    x = panel.xpos ? panel.xpos[local] : (panel.kfire[local] < NEVER ? spec.cursor_x[Math.min(panel.kfire[local], spec.steps)] : NaN);
  }
  if (x === null && target.x !== undefined) x = target.x;
  const strip = (spec.density || []).find((e) => e.layer === n); // a heat strip: ring its channel's row
  const y = strip ? V.densityY(strip, channelOf(n, flat)) : spec.y0[n] + flat * spec.y_scale[n];
  Plotly.restyle(el("raster"), { x: [Number.isFinite(x) ? [x] : []], y: [Number.isFinite(x) ? [y] : []] },
                 [spec.highlight_trace]);
  Plotly.relayout(el("maps"), { shapes });
  const rgb = panel && panel.kind === "rgb";
  const what = rgb ? `pixel ${unravel(spec.shapes[n].slice(1), flat % (panel.layout.h * panel.layout.w))}`
    : `neuron ${unravel(spec.shapes[n], flat)}`;
  el("hovered").textContent = `${spec.count_labels[n]} ${what}` + valueText(panel, local) +
    (spec.traceable[n] ? " · click to open its membrane trace" : "");
}

function hover(source) {
  return (ev) => {
    const pt = ev.points && ev.points[0];
    if (!pt) return;
    const hit = source === "raster" ? densityAt(pt) : null;
    if (hit) {
      highlight(null);
      el("hovered").textContent = densityText(hit);
      return;
    }
    if (source === "raster" && hidden(pt)) return highlight(null);
    const target = neuronAt(source, pt);
    if (target && source === "raster") target.x = pt.x;
    if (target) highlight(target);
    if (target && source === "raster") showTip(tipText(target[0], target[1], pt), ev.event);
  };
}

function click(source) {
  return (ev) => {
    const pt = ev.points && ev.points[0];
    const hit = pt && source === "raster" ? densityAt(pt) : null;
    if (hit) return pickChannel(hit);
    if (pt && source === "raster" && hidden(pt)) return;
    const target = pt && neuronAt(source, pt);
    if (!target) return;
    const [n, flat] = target;
    if (!spec.traceable[n]) {
      el("message").textContent = `${spec.count_labels[n]} ${unravel(spec.shapes[n], flat)} is an input pixel: it has ` +
        "no membrane, its spike time is 1 − x̂. Click a neuron of a hidden layer to open its trace.";
      return;
    }
    el("message").textContent = `Opening the membrane trace of ${spec.count_labels[n]} ${unravel(spec.shapes[n], flat)}…`;
    // the click carries the cursor: a pending "cursor at rest" message would follow it, make the page rerun the
    // raster again and lose the switch to the trace page
    clearTimeout(linkTimer);
    linked = view();
    send("streamlit:setComponentValue", { value: { layer: spec.names[n], neuron: flat, cursor: k, reveal: reveal ? 1 : 0,
                                                   speed: speed, seq: `${Date.now()}-${Math.random()}` },
                                           dataType: "json" });
  };
}

function pickChannel(hit) {
  // a click on a heat strip: the page maps that row's most active channel (a rerun, with a new spec)
  const { n, cell } = hit, label = spec.count_labels[n];
  if (!spec.traceable[n]) {
    el("message").textContent = "The input's channels are all in the input panel below. Click a hidden layer's strip " +
      "to map one of its channels.";
    return;
  }
  el("message").textContent = `Mapping channel ${cell.top} of ${label}…`;
  clearTimeout(linkTimer);
  linked = view();
  send("streamlit:setComponentValue", { value: { layer: spec.names[n], channel: cell.top, cursor: k,
                                                 reveal: reveal ? 1 : 0, speed: speed,
                                                 seq: `${Date.now()}-${Math.random()}` }, dataType: "json" });
}

// --- building ------------------------------------------------------------------------------------------------
function build(next) {
  const first = spec === null;
  spec = next;
  stats.builds += 1;
  stats.spec = spec.id;
  for (const p of spec.panels) {
    for (const key of ["cells", "kfire", "act", "xpos"]) if (p[key]) p[key] = V.decode(p[key]);
    p.cells = V.panelCells(p);
    p.cellOf = V.cellOf(p, p.cells);
  }
  for (const a of spec.activations || []) {
    if (a) for (const key of ["ann", "snn"]) a[key] = V.decode(a[key]);
  }
  for (const d of spec.density || []) {
    d.counts = V.decode(d.counts);
    d.top = V.decode(d.top);
  }
  const slider = el("slider");
  slider.max = spec.steps;
  if (first || k > spec.steps) k = spec.cursor;
  if (first) { // a link's Reveal and speed; the page's own controls after that
    reveal = Boolean(spec.reveal);
    el("reveal").checked = reveal;
    if (spec.speed) { speed = Number(spec.speed); el("speed").value = String(spec.speed); }
  }
  // no image button (the maps' cells are canvases it cannot see: PNG, SVG and Animation above export them) and no
  // cloud upload
  const config = { responsive: true, displaylogo: false, showSendToCloud: false, showEditInChartStudio: false,
                   modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage", "sendDataToCloud", "editInChartStudio"] };
  el("speed").title = `Play's speed: ${spec.steps_per_window} steps make one layer's window`;
  el("message").textContent = "";
  return Promise.all([
    Plotly.react(el("raster"), spec.raster.data, spec.raster.layout, config),
    Plotly.react(el("maps"), spec.maps.data, spec.maps.layout, config),
  ]).then(() => {
    if (first) {
      for (const [id, source] of [["raster", "raster"], ["maps", "maps"]]) {
        el(id).on("plotly_hover", hover(source));
        el(id).on("plotly_unhover", () => highlight(null));
        el(id).on("plotly_click", click(source));
      }
      el("maps").on("plotly_afterplot", placeMaps); // a resize or a relayout moves the axes
    }
    setUpMaps();
    return paint(k, performance.now());
  }).then(() => send("streamlit:setFrameHeight", { height: document.body.scrollHeight + 8 }));
}

// --- slide export (export.js) -----------------------------------------------------------------------------------
let exporting = false;
async function exportSlide(format) {
  const X = window.ttfsExport;
  if (!spec || !X || exporting) return;
  exporting = true;
  if (playing) stop();
  highlight(null);
  const at = k, stem = spec.export.stem;
  el("message").textContent = `Preparing the ${format === "html" ? "animation" : format.toUpperCase()}…`;
  try {
    let name, href;
    if (format === "html") {
      name = `${stem}_filling-in.html`;
      const counts = (s) => [countsText(s), compareText(s)].filter((t) => t).join("  |  ");
      const page = await X.animation(Plotly, spec, counts, fillMap);
      for (const p of spec.panels) fillMap(p, at); // the maps were painted at the end to read their colours
      href = URL.createObjectURL(new Blob([page], { type: "text/html" }));
    } else {
      name = X.fileName(stem, spec.cursor_t[at], format);
      const out = await X.compose(Plotly, spec, at, [countsText(at), compareText(at)], reveal, format);
      href = format === "svg" ? URL.createObjectURL(new Blob([out], { type: "image/svg+xml" })) : out;
    }
    X.download(name, href);
    stats.exports.push(name);
    if (format === "png") stats.lastExport = X.last;
    el("message").textContent = `Downloaded ${name}.`;
  } catch (e) {
    el("message").textContent = `Could not export: ${e}`;
    throw e;
  } finally {
    exporting = false;
  }
}

function wire() {
  const s = () => spec.steps_per_window;
  const on = (id, f) => el(id).addEventListener("click", (ev) => { if (playing) stop(); go(f(), ev.timeStamp); });
  on("start", () => 0);
  on("prev_window", () => Math.max(0, Math.floor((k - 1) / s()) * s()));
  on("back", () => k - 1);
  on("forward", () => k + 1);
  on("next_window", () => Math.min(spec.steps, (Math.floor(k / s()) + 1) * s()));
  on("end", () => spec.steps);
  el("play").addEventListener("click", play);
  el("speed").addEventListener("change", (ev) => { speed = Number(ev.target.value) || DEFAULT_SPEED; remember(); });
  el("reveal").addEventListener("change", (ev) => {
    reveal = Boolean(ev.target.checked);
    if (spec) go(k, ev.timeStamp); // go() remembers the view
  });
  for (const [id, format] of [["png", "png"], ["svg", "svg"], ["anim", "html"]]) {
    el(id).addEventListener("click", () => { exportSlide(format); });
  }
  el("slider").addEventListener("input", (ev) => { if (playing) stop(); go(Number(ev.target.value), ev.timeStamp); });
}

window.addEventListener("message", (ev) => {
  const msg = ev.data;
  if (!msg || msg.type !== "streamlit:render") return;
  stats.renders += 1;
  const next = JSON.parse(msg.args.spec);
  linked = `${next.cursor}/${next.reveal ? 1 : 0}/${next.speed}`; // what the page knows
  if (spec && view() !== linked) remember();
  if (spec && next.id === spec.id) return; // a rerun that changed nothing here: keep the cursor where it is
  if (playing) stop();
  build(next).catch((e) => { el("message").textContent = "Could not draw the timeline: " + e; throw e; });
});

wire();
send("streamlit:componentReady", { apiVersion: 1 });
