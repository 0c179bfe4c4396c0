// A drawing pad for one digit: white strokes on black, as MNIST. "Use this drawing" sends the pad downsampled to
// SIZE × SIZE grey levels (base64 bytes); the server crops, scales and centres it as MNIST was prepared
// (ttfs_ui.uploads.mnist_style). Streamlit's component protocol (v1), spoken directly.
"use strict";

const SIZE = 56;
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
let drawing = false;
let strokes = 0;

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*");
}

function clear() {
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, pad.width, pad.height);
  strokes = 0;
  document.getElementById("note").textContent = "Draw one digit, large, with the mouse or a finger.";
}

function at(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  drawing = true;
  strokes += 1;
  pad.setPointerCapture(ev.pointerId);
  const [x, y] = at(ev);
  ctx.strokeStyle = "white";
  ctx.fillStyle = "white";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
});
pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const [x, y] = at(ev);
  ctx.lineTo(x, y);
  ctx.stroke();
});
for (const name of ["pointerup", "pointercancel", "pointerleave"]) pad.addEventListener(name, () => { drawing = false; });

document.getElementById("clear").addEventListener("click", clear);
document.getElementById("use").addEventListener("click", () => {
  if (!strokes) {
    document.getElementById("note").textContent = "The pad is empty: draw a digit first.";
    return;
  }
  const small = document.createElement("canvas");
  small.width = small.height = SIZE;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage(pad, 0, 0, SIZE, SIZE);
  const rgba = sctx.getImageData(0, 0, SIZE, SIZE).data;
  let bin = "";
  for (let i = 0; i < rgba.length; i += 4) bin += String.fromCharCode(rgba[i]);
  send("streamlit:setComponentValue", { value: { pixels: btoa(bin), size: SIZE, seq: `${Date.now()}-${Math.random()}` },
                                        dataType: "json" });
  document.getElementById("note").textContent = "Sent: the page now uses your drawing.";
});

window.addEventListener("message", (ev) => {
  if (ev.data && ev.data.type === "streamlit:render") send("streamlit:setFrameHeight", { height: document.body.scrollHeight + 4 });
});
clear();
send("streamlit:componentReady", { apiVersion: 1 });
