// Slide export of the live timeline (ttfs_ui/live.py, timeline.js): the raster with its feature maps as ONE image
// (PNG or SVG) with a title, the cursor time in τ_c, the per-layer fired counts and a legend; and the filling-in as a
// self-contained HTML animation. The maps' cells are canvases outside Plotly (Plotly's own image of the maps figure
// has transparent heatmaps, so its PNG was blank): every export draws those canvases itself, under the maps figure's
// axes and colour bar.
//
// The pure parts (file names, the SVG document, the animation page) take plain data and return strings, so that
// tests/test_raster_export.py runs them under node; `compose` (timeline.js calls it) reads the page: Plotly.toImage
// of both figures, the cell canvases, and draws them on one canvas. index.html loads this file before timeline.js.
"use strict";
(function (root) {
  const PAD = 16, TITLE_PX = 20, LINE_PX = 14, SWATCH = 12;

  // "lenet5_img0_raster" + t = 2.4134 -> "lenet5_img0_raster_t2.41.png" (tiny times keep 3 significant digits)
  function fileName(stem, t, ext) {
    const a = Math.abs(t);
    const time = a === 0 || a >= 0.01 ? t.toFixed(2) : t.toExponential(2).replace("+", "");
    return `${stem}_t${time}.${ext}`;
  }

  function escapeXml(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }

  // The legend: one swatch per layer (its raster colour), the cells not fired yet, and what lies after the cursor.
  function legendItems(spec, reveal) {
    const items = spec.count_labels.map((label, n) => ({ colour: spec.colours[n], label }));
    items.push({ colour: spec.not_fired, label: "map cell: not fired by the cursor" });
    items.push({ colour: reveal ? "#ffffff" : "#b0b4bd", label: reveal ? "after the cursor: hidden" : "after the cursor: shaded", outline: true });
    return items;
  }

  // The text of a slide: title, the cursor's time, then the counts line(s).
  function headerLines(spec, step, counts) {
    return { title: spec.export.title, lines: [`Cursor: ${spec.labels[step]}`].concat(counts.filter((c) => c)) };
  }

  // Greedy word wrap of `text` to `width` pixels, measured by `measure(text) -> px`.
  function wrap(text, width, measure) {
    const words = String(text).split(" "), out = [];
    let line = "";
    for (const w of words) {
      const next = line ? line + " " + w : w;
      if (line && measure(next) > width) { out.push(line); line = w; } else line = next;
    }
    if (line) out.push(line);
    return out;
  }

  const roughMeasure = (text) => 7 * String(text).length; // ~7 px a character at 13 px: SVG's own wrap

  // Rows of the legend laid out left to right, wrapped at `width`: [{x, y, colour, label, outline}].
  function legendLayout(items, width, y0, measure) {
    const out = [];
    let x = PAD, y = y0;
    for (const it of items) {
      const w = SWATCH + 6 + measure(it.label) + 18;
      if (x > PAD && x + w > width - PAD) { x = PAD; y += LINE_PX + 6; }
      out.push(Object.assign({ x, y }, it));
      x += w;
    }
    return { items: out, bottom: y + LINE_PX + PAD };
  }

  // One SVG document: title and lines of text, the raster's own SVG (Plotly's) and the maps' cells (PNG images, one
  // pixel a cell, not smoothed) under the maps figure's SVG, then the legend. d: {width, title, lines, raster:
  // {x, y, w, h, markup}, maps: {x, y, w, h, markup}, cells: [{x, y, w, h, href}], legend: [...]} (markup: an
  // <svg> element as text).
  function svgDocument(d) {
    const width = d.width;
    const text = [];
    let y = PAD;
    for (const part of wrap(d.title, width - 2 * PAD, (t) => 10 * String(t).length)) { // ~10 px a bold character
      y += TITLE_PX + 2;
      text.push(`<text x="${PAD}" y="${y}" font-size="${TITLE_PX - 2}" font-weight="bold">${escapeXml(part)}</text>`);
    }
    for (const line of d.lines) {
      for (const part of wrap(line, width - 2 * PAD, roughMeasure)) {
        y += LINE_PX + 4;
        text.push(`<text x="${PAD}" y="${y}" font-size="13">${escapeXml(part)}</text>`);
      }
    }
    const top = y + PAD;
    const nest = (m, x, yy) => m.markup.replace(/^[\s\S]*?<svg\b/, `<svg x="${x}" y="${yy}"`);
    const raster = nest(d.raster, d.raster.x, top + d.raster.y);
    const cells = d.cells.map((c) =>
      `<image x="${c.x}" y="${top + c.y}" width="${c.w}" height="${c.h}" preserveAspectRatio="none" ` +
      `style="image-rendering:pixelated" image-rendering="optimizeSpeed" href="${c.href}" xlink:href="${c.href}"/>`);
    const maps = nest(d.maps, d.maps.x, top + d.maps.y);
    const legendTop = top + d.maps.y + d.maps.h + 8;
    const lay = legendLayout(d.legend, width, legendTop, roughMeasure);
    const legend = lay.items.map((it) =>
      `<rect x="${it.x}" y="${it.y}" width="${SWATCH}" height="${SWATCH}" fill="${escapeXml(it.colour)}"` +
      (it.outline ? ' stroke="#888" stroke-width="1"' : "") + "/>" +
      `<text x="${it.x + SWATCH + 6}" y="${it.y + SWATCH - 1}" font-size="12">${escapeXml(it.label)}</text>`);
    const height = lay.bottom;
    return `<?xml version="1.0" encoding="UTF-8"?>\n` +
      `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="${width}" ` +
      `height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" fill="#31333f">\n` +
      `<rect width="100%" height="100%" fill="#ffffff"/>\n${text.join("\n")}\n${raster}\n${cells.join("\n")}\n` +
      `${maps}\n${legend.join("\n")}\n</svg>\n`;
  }

  // A self-contained HTML page that plays the filling-in: the raster (every spike) with everything after the cursor
  // hidden, the maps' cells coloured once fired, the cursor's label and the counts at every step. No network access,
  // no script but its own. d: {title, steps, fps, width, raster: {href, w, h, plot: [x0, y0, x1, y1], cursor: [px
  // per step]}, maps: {href, w, h}, panels: [{x, y, w, h, cols, rows, kcell: base64 Int16 per cell (32767: never,
  // -1: gap), colours: PNG data URL of the panel all fired, grey: [r, g, b]}], labels: [...], counts: [...]}.
  function animationHtml(d) {
    const data = JSON.stringify(d).replace(/</g, "\\u003c");
    return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeXml(d.title)}</title>
<style>body{font-family:sans-serif;color:#31333f;margin:16px}#bar{display:flex;gap:8px;align-items:center;margin:8px 0}
#slider{flex:1}#label,#counts{font-size:13px;margin:4px 0}canvas{display:block}</style></head>
<body><h3>${escapeXml(d.title)}</h3>
<div id="bar"><button id="play">▶ Play</button><input id="slider" type="range" min="0" max="${d.steps}" value="0">
<select id="speed"><option value="5">5 steps/s</option><option value="10">10 steps/s</option>
<option value="30" selected>30 steps/s</option></select></div>
<div id="label"></div><div id="counts"></div><canvas id="view"></canvas>
<script id="data" type="application/json">${data}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const NEVER = 32767, view = document.getElementById("view"), ctx = view.getContext("2d");
view.width = D.width; view.height = D.raster.h + D.maps.h;
const load = (src) => new Promise((ok) => { const i = new Image(); i.onload = () => ok(i); i.src = src; });
function int16(b64) { const s = atob(b64), u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return new Int16Array(u.buffer); }
let raster, maps, k = 0, timer = null;
const panels = D.panels.map((p) => Object.assign({}, p, { kcell: int16(p.kcell) }));
function frame(step) {
  k = step;
  document.getElementById("slider").value = k;
  document.getElementById("label").textContent = D.labels[k];
  document.getElementById("counts").textContent = D.counts[k];
  ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, view.width, view.height);
  ctx.drawImage(raster, 0, 0, D.raster.w, D.raster.h);
  const [x0, y0, x1, y1] = D.raster.plot, x = D.raster.cursor[k];
  ctx.fillStyle = "#ffffff"; if (x < x1) ctx.fillRect(x + 1, y0, x1 - x, y1 - y0);
  ctx.fillStyle = "#000000"; ctx.fillRect(x - 1, y0, 2, y1 - y0);
  for (const p of panels) {
    const img = p.pixels, px = img.data;
    for (let c = 0; c < p.kcell.length; c++) {
      const f = p.kcell[c], o = 4 * c;
      if (f < 0) { px[o + 3] = 0; continue; }
      const on = f <= k;
      px[o] = on ? p.full[o] : p.grey[0]; px[o + 1] = on ? p.full[o + 1] : p.grey[1];
      px[o + 2] = on ? p.full[o + 2] : p.grey[2]; px[o + 3] = 255;
    }
    p.ctx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(p.canvas, p.x, D.raster.h + p.y, p.w, p.h);
  }
  ctx.drawImage(maps, 0, D.raster.h, D.maps.w, D.maps.h);
}
function play() {
  const b = document.getElementById("play");
  if (timer) { clearInterval(timer); timer = null; b.textContent = "▶ Play"; return; }
  if (k >= D.steps) k = 0;
  b.textContent = "❚❚ Pause";
  timer = setInterval(() => { if (k >= D.steps) return play(); frame(k + 1); },
                      1000 / Number(document.getElementById("speed").value));
}
Promise.all([load(D.raster.href), load(D.maps.href)].concat(panels.map((p) => load(p.colours)))).then(([r, m, ...cs]) => {
  raster = r; maps = m;
  panels.forEach((p, i) => {
    p.canvas = document.createElement("canvas"); p.canvas.width = p.cols; p.canvas.height = p.rows;
    p.ctx = p.canvas.getContext("2d"); p.ctx.drawImage(cs[i], 0, 0);
    p.full = p.ctx.getImageData(0, 0, p.cols, p.rows).data.slice();
    p.pixels = p.ctx.createImageData(p.cols, p.rows);
  });
  document.getElementById("play").onclick = play;
  document.getElementById("speed").onchange = () => { if (timer) { play(); play(); } };
  document.getElementById("slider").oninput = (e) => { if (timer) play(); frame(Number(e.target.value)); };
  frame(0);
  window.ttfsAnimationReady = true;
});
</script></body></html>
`;
  }

  // --- reading the page (the browser only) -------------------------------------------------------------------------
  const SCALE = 2; // pixels a CSS pixel in the PNG: sharp on a projector

  function boxOf(node) { return { w: Math.round(node.clientWidth), h: Math.round(node.clientHeight) }; }

  function cellPlaces(spec) {
    // each map panel's canvases (the grey "not fired" one, then the coloured one) where they lie on the maps figure
    const out = [];
    for (const p of spec.panels) {
      for (const c of p.canvases || []) {
        const s = c.style;
        out.push({ canvas: c, x: parseFloat(s.left) || 0, y: parseFloat(s.top) || 0, w: parseFloat(s.width) || c.width,
                   h: parseFloat(s.height) || c.height });
      }
    }
    return out;
  }

  // The raster and the maps as they are now (cursor, reveal) in one picture: {png: data URL, svg: text}.
  async function compose(Plotly, spec, step, counts, reveal, format) {
    const raster = document.getElementById("raster"), maps = document.getElementById("maps");
    const rb = boxOf(raster), mb = boxOf(maps);
    const width = Math.max(rb.w, mb.w) + 2 * PAD;
    const header = headerLines(spec, step, counts);
    const legend = legendItems(spec, reveal);
    const places = cellPlaces(spec);
    if (format === "svg") {
      const svgOf = async (gd, b) => decodeURIComponent((await Plotly.toImage(gd, { format: "svg", width: b.w, height: b.h }))
        .replace(/^data:image\/svg\+xml,/, ""));
      const [rs, ms] = await Promise.all([svgOf(raster, rb), svgOf(maps, mb)]);
      return svgDocument({
        width, title: header.title, lines: header.lines, legend,
        raster: { x: PAD, y: 0, w: rb.w, h: rb.h, markup: rs }, maps: { x: PAD, y: rb.h, w: mb.w, h: mb.h, markup: ms },
        cells: places.map((c) => ({ x: PAD + c.x, y: rb.h + c.y, w: c.w, h: c.h, href: c.canvas.toDataURL("image/png") })),
      });
    }
    const [rp, mp] = await Promise.all([
      Plotly.toImage(raster, { format: "png", width: rb.w, height: rb.h, scale: SCALE }),
      Plotly.toImage(maps, { format: "png", width: mb.w, height: mb.h, scale: SCALE }),
    ]);
    const [ri, mi] = await Promise.all([rp, mp].map(image));
    const canvas = document.createElement("canvas"), ctx = canvas.getContext("2d");
    ctx.font = "13px sans-serif";
    const measure = (t) => ctx.measureText(t).width;
    const lines = [].concat(...header.lines.map((l) => wrap(l, width - 2 * PAD, measure)));
    ctx.font = `bold ${TITLE_PX - 2}px sans-serif`;
    const titles = wrap(header.title, width - 2 * PAD, measure);
    const below = PAD + titles.length * (TITLE_PX + 2); // the title's last baseline
    const top = below + lines.length * (LINE_PX + 4) + PAD;
    const lay = legendLayout(legend, width, top + rb.h + mb.h + 8, measure);
    canvas.width = width * SCALE;
    canvas.height = lay.bottom * SCALE;
    ctx.scale(SCALE, SCALE);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, lay.bottom);
    ctx.fillStyle = "#31333f";
    ctx.font = `bold ${TITLE_PX - 2}px sans-serif`;
    titles.forEach((l, i) => ctx.fillText(l, PAD, PAD + (i + 1) * (TITLE_PX + 2)));
    ctx.font = "13px sans-serif";
    lines.forEach((l, i) => ctx.fillText(l, PAD, below + (i + 1) * (LINE_PX + 4)));
    ctx.drawImage(ri, PAD, top, rb.w, rb.h);
    ctx.imageSmoothingEnabled = false;
    for (const c of places) ctx.drawImage(c.canvas, PAD + c.x, top + rb.h + c.y, c.w, c.h);
    // where the maps' cells lie in the picture (CSS pixels; the PNG has SCALE pixels to one): for a test to look
    api.last = { scale: SCALE, cells: places.map((c) => ({ x: PAD + c.x, y: top + rb.h + c.y, w: c.w, h: c.h })) };
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(mi, PAD, top + rb.h, mb.w, mb.h);
    ctx.font = "12px sans-serif";
    for (const it of lay.items) {
      ctx.fillStyle = it.colour;
      ctx.fillRect(it.x, it.y, SWATCH, SWATCH);
      if (it.outline) { ctx.strokeStyle = "#888"; ctx.strokeRect(it.x, it.y, SWATCH, SWATCH); }
      ctx.fillStyle = "#31333f";
      ctx.fillText(it.label, it.x + SWATCH + 6, it.y + SWATCH - 1);
    }
    return canvas.toDataURL("image/png");
  }

  function image(src) {
    return new Promise((ok, fail) => { const i = new Image(); i.onload = () => ok(i); i.onerror = fail; i.src = src; });
  }

  function int16Base64(values) {
    const bytes = new Uint8Array(new Int16Array(values).buffer);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  // The animation's data from the page: the raster without its cursor, the cursor's pixel at every step, and per map
  // panel each cell's fire step and its colour once fired (the panel painted at the last step).
  async function animation(Plotly, spec, countsAt, fillMap) {
    const raster = document.getElementById("raster"), maps = document.getElementById("maps");
    const rb = boxOf(raster), mb = boxOf(maps);
    const shapes = (raster.layout.shapes || []).slice();
    await Plotly.relayout(raster, { shapes: [] });
    let rp;
    try {
      rp = await Plotly.toImage(raster, { format: "png", width: rb.w, height: rb.h });
    } finally {
      await Plotly.relayout(raster, { shapes });
    }
    const mp = await Plotly.toImage(maps, { format: "png", width: mb.w, height: mb.h });
    const xa = raster._fullLayout.xaxis, ya = raster._fullLayout.yaxis;
    const cursor = spec.cursor_x.map((x) => xa._offset + xa.l2p(x));
    const places = cellPlaces(spec);
    const panels = spec.panels.map((p) => {
      fillMap(p, spec.steps); // every neuron that fires, in its colour
      const colours = p.canvases[1].toDataURL("image/png");
      const kcell = Array.from(p.cells, (local) => (local < 0 ? -1 : Math.min(p.kfire[local], 32767)));
      if (p.kind === "rgb") { // a pixel shows once any of its three channels has fired
        const hw = p.layout.h * p.layout.w;
        for (let i = 0; i < hw; i++) kcell[i] = Math.min(p.kfire[i], p.kfire[hw + i], p.kfire[2 * hw + i]);
      }
      const place = places.find((c) => c.canvas === p.canvases[1]);
      const grey = Array.from(rgbOf(spec.not_fired)).slice(0, 3);
      return { x: place.x, y: place.y, w: place.w, h: place.h, cols: p.cols, rows: p.rows, kcell: int16Base64(kcell),
               colours, grey };
    });
    const steps = spec.steps;
    return animationHtml({
      title: `${spec.export.title} — the raster filling in`, steps, width: Math.max(rb.w, mb.w),
      raster: { href: rp, w: rb.w, h: rb.h, plot: [xa._offset, ya._offset, xa._offset + xa._length, ya._offset + ya._length],
                cursor },
      maps: { href: mp, w: mb.w, h: mb.h }, panels,
      labels: spec.labels, counts: Array.from({ length: steps + 1 }, (_, k) => countsAt(k)),
    });
  }

  function rgbOf(colour) {
    const c = document.createElement("canvas").getContext("2d");
    c.fillStyle = colour;
    c.fillRect(0, 0, 1, 1);
    return c.getImageData(0, 0, 1, 1).data;
  }

  // Hand a file to the browser's downloads (an <a download> click: the component's frame allows downloads).
  function download(name, href) {
    const a = document.createElement("a");
    a.href = href;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  const api = { fileName, escapeXml, legendItems, headerLines, wrap, legendLayout, svgDocument, animationHtml, compose,
                animation, download };
  root.ttfsExport = api;
  if (typeof module === "object" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
