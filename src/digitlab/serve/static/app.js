// The drawing page: strokes on a canvas (dark ink on white), sent as a PNG to /api/predict
// while the user draws. No libraries, no build step.
"use strict";

(() => {
  const SIZE = 280;            // logical canvas size; strokes are stored in these units
  const SEND = 140;            // side of the PNG sent to the server
  const PEN = 20;              // marker width at SIZE: thick like MNIST's strokes after scaling
  const INK = "#111";
  const PAPER = "#fff";
  const LIVE_MS = 200;         // at most one prediction this often while the pen moves
  const RETRY_MS = 3000;       // how often to look for the server again once it is gone

  const $ = (id) => document.getElementById(id);
  const canvas = $("pad");
  const ctx = canvas.getContext("2d");
  const ui = {
    digit: $("digit"), status: $("status"), bars: $("bars"), seen: $("model-input"),
    digits: $("digits"), chart: $("chart"), offline: $("offline"), info: $("model-info"),
    number: $("number"), file: $("file"), dropzone: $("dropzone"), hint: $("drop-hint"),
  };

  let strokes = [];            // [[x, y], ...] per stroke, in SIZE units
  let current = null;          // the stroke being drawn
  let upload = null;           // {file, bitmap} when showing an uploaded image instead
  let timer = null;
  let inFlight = false;
  let dirty = false;           // something changed while a request was in flight
  let seq = 0;                 // answers to anything but the latest request are dropped
  let retry = null;

  // --- the pad ---------------------------------------------------------------------------

  function fitCanvas() {
    // Backing store at device resolution (capped), drawing in SIZE units.
    const scale = Math.min(window.devicePixelRatio || 1, 2);
    canvas.width = canvas.height = Math.round(SIZE * scale);
    ctx.setTransform(canvas.width / SIZE, 0, 0, canvas.height / SIZE, 0, 0);
    paint();
  }

  function paint() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, SIZE, SIZE);
    if (upload && upload.bitmap) {
      const b = upload.bitmap;
      const k = Math.min(SIZE / b.width, SIZE / b.height);
      ctx.drawImage(b, (SIZE - b.width * k) / 2, (SIZE - b.height * k) / 2, b.width * k, b.height * k);
    }
    ctx.strokeStyle = ctx.fillStyle = INK;
    ctx.lineWidth = PEN;
    ctx.lineCap = ctx.lineJoin = "round";
    for (const s of strokes) drawStroke(s);
    ui.hint.hidden = strokes.length > 0 || upload !== null;
  }

  function drawStroke(points) {
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], PEN / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    // Quadratic curves through the midpoints smooth the jitter of raw pointer samples.
    for (let i = 1; i < points.length - 1; i++) {
      const [x, y] = points[i];
      const [nx, ny] = points[i + 1];
      ctx.quadraticCurveTo(x, y, (x + nx) / 2, (y + ny) / 2);
    }
    const last = points[points.length - 1];
    ctx.lineTo(last[0], last[1]);
    ctx.stroke();
  }

  function toPad(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * SIZE / r.width, (ev.clientY - r.top) * SIZE / r.height];
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    ev.preventDefault();
    try { canvas.setPointerCapture(ev.pointerId); } catch { /* pointer already gone */ }
    if (upload) { upload = null; strokes = []; }
    current = [toPad(ev)];
    strokes.push(current);
    paint();
    schedule(LIVE_MS);
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (!current) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
    for (const e of events.length ? events : [ev]) current.push(toPad(e));
    paint();
    schedule(LIVE_MS);
  });

  function endStroke() {
    if (!current) return;
    current = null;
    schedule(0);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  function undo() {
    if (upload) { clearAll(); return; }
    strokes.pop();
    paint();
    changed();
  }

  function clearAll() {
    strokes = [];
    upload = null;
    current = null;
    paint();
    changed();
  }

  function changed() {
    if (isEmpty()) { seq++; resetAnswer(); } else { schedule(0); }
  }

  function isEmpty() { return strokes.length === 0 && upload === null; }

  // --- uploads and drag-and-drop -----------------------------------------------------------

  async function useFile(file) {
    if (!file) return;
    let bitmap = null;
    try { bitmap = await createImageBitmap(file); } catch { bitmap = null; }  // the server decides
    strokes = [];
    upload = { file, bitmap };
    paint();
    schedule(0);
  }

  $("upload").addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", () => { useFile(ui.file.files[0]); ui.file.value = ""; });
  for (const type of ["dragenter", "dragover"]) {
    ui.dropzone.addEventListener(type, (ev) => { ev.preventDefault(); ui.dropzone.classList.add("dragging"); });
  }
  ui.dropzone.addEventListener("dragleave", () => ui.dropzone.classList.remove("dragging"));
  ui.dropzone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    ui.dropzone.classList.remove("dragging");
    useFile(ev.dataTransfer.files[0]);
  });
  // A file dropped beside the pad must not make the browser navigate away from the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());

  // --- talking to the server -------------------------------------------------------------

  function schedule(ms) {
    if (isEmpty()) return;
    if (inFlight) { dirty = true; return; }
    if (timer !== null && ms > 0) return;  // already due soon: keep that time (a throttle)
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; predict(); }, ms);
  }

  function query() {
    const q = new URLSearchParams({ top_k: "3", include_input: "true" });
    if (ui.number.checked) q.set("number", "true");
    return "/api/predict?" + q;
  }

  function padBlob() {
    // The server's preprocessing costs grow with the pixel count, and a digit needs far
    // fewer pixels than a high-DPI pad has: send a fixed, modest size.
    const small = document.createElement("canvas");
    small.width = small.height = SEND;
    const c = small.getContext("2d");
    c.imageSmoothingQuality = "high";
    c.drawImage(canvas, 0, 0, SEND, SEND);
    // The pad is grey ink on white paper, so a one-channel PNG says it all: a quarter of
    // the RGBA canvas PNG's pixel bytes, and the server decodes a 140x140 one in 0.26 ms
    // instead of 0.61. Browsers without CompressionStream send the canvas's own PNG.
    if (typeof CompressionStream === "function") {
      return greyPng(c.getImageData(0, 0, SEND, SEND).data, SEND)
        .catch(() => new Promise((resolve) => small.toBlob(resolve, "image/png")));
    }
    return new Promise((resolve) => small.toBlob(resolve, "image/png"));
  }

  // --- a grey PNG encoder (8-bit greyscale, no filter, zlib by the browser) ----------------

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function pngChunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }

  async function greyPng(rgba, side) {
    const rows = new Uint8Array(side * (side + 1));  // each row: filter byte 0, then pixels
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        const i = 4 * (y * side + x);
        // Rec. 601 luma, as the server turns colour into grey.
        rows[y * (side + 1) + 1 + x] =
          Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]);
      }
    }
    const zipped = new Uint8Array(await new Response(
      new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const header = new Uint8Array(13);  // width, height, 8 bits, greyscale, deflate, no
    const view = new DataView(header.buffer);  // filter method, no interlace
    view.setUint32(0, side);
    view.setUint32(4, side);
    header[8] = 8;
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([signature, pngChunk("IHDR", header), pngChunk("IDAT", zipped),
      pngChunk("IEND", new Uint8Array(0))], { type: "image/png" });
  }

  async function predict() {
    if (isEmpty()) return;
    const id = ++seq;
    inFlight = true;
    dirty = false;
    try {
      let init;
      if (upload) {
        const form = new FormData();
        form.append("file", upload.file, upload.file.name || "upload");
        init = { method: "POST", body: form };
      } else {
        init = { method: "POST", body: await padBlob(), headers: { "Content-Type": "image/png" } };
      }
      let res;
      try {
        res = await fetch(query(), init);
      } catch {
        if (id === seq) serverGone();
        return;
      }
      serverBack();
      const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
      if (id !== seq) return;
      if (res.ok) showAnswer(body);
      else showProblem(res.status, body);
    } finally {
      inFlight = false;
      if (dirty) schedule(0);
    }
  }

  function serverGone() {
    ui.offline.hidden = false;
    ui.offline.textContent = "Cannot reach the digitlab server at " + location.host +
      ". Is `digitlab serve` still running? The page will reconnect by itself.";
    showStatus("No answer: the server cannot be reached.", "error");
    if (retry === null) retry = setInterval(checkServer, RETRY_MS);
  }

  function serverBack() {
    ui.offline.hidden = true;
    if (retry !== null) { clearInterval(retry); retry = null; }
  }

  async function checkServer() {
    try {
      const res = await fetch("/healthz", { cache: "no-store" });
      if (res.ok) { serverBack(); loadInfo(); schedule(0); }
    } catch { /* still gone */ }
  }

  async function loadInfo() {
    try {
      const res = await fetch("/api/model");
      if (!res.ok) throw new Error(String(res.status));
      const m = await res.json();
      const acc = typeof m.test_accuracy === "number" ? `, ${(100 * m.test_accuracy).toFixed(2)}% on the MNIST test set` : "";
      ui.info.textContent = `Model: ${m.model} (${Number(m.parameters).toLocaleString()} parameters${acc})`;
    } catch {
      ui.info.textContent = "";
      serverGone();
    }
  }

  // --- showing answers -------------------------------------------------------------------

  function buildBars() {
    for (let d = 0; d < 10; d++) {
      const li = document.createElement("li");
      li.innerHTML = `<span class="label">${d}</span><span class="track" aria-hidden="true">` +
        `<span class="fill"></span></span><span class="pct">–</span>`;
      ui.bars.appendChild(li);
    }
  }

  function setBars(probs) {
    const best = probs ? probs.indexOf(Math.max(...probs)) : -1;
    [...ui.bars.children].forEach((li, d) => {
      const p = probs ? probs[d] : 0;
      li.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
      li.querySelector(".pct").textContent = probs ? (100 * p).toFixed(1) + "%" : "–";
      li.classList.toggle("top", d === best);
      li.setAttribute("aria-label", probs ? `${d}: ${(100 * p).toFixed(1)} percent` : `${d}: no answer`);
    });
  }

  function showStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = "status" + (kind ? " " + kind : "");
  }

  function showSeen(b64) {
    ui.seen.hidden = !b64;
    if (b64) ui.seen.src = "data:image/png;base64," + b64;
  }

  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  function showAnswer(a) {
    const many = a.digits && a.digits.length > 1;
    ui.digit.textContent = a.number ?? String(a.digit);
    ui.digit.dataset.state = "answer";
    const low = a.low_confidence ? " Low confidence: the model is not sure." : "";
    const what = many ? `Read ${a.digits.length} digits` : `Digit ${a.number ?? a.digit}`;
    showStatus(`${what}, ${pct(a.confidence)} confident.${low}`, a.low_confidence ? "low" : "");
    // Several digits: each one's confidence is listed instead of one chart.
    ui.chart.hidden = many;
    setBars(many ? null : a.probabilities || (a.digits && a.digits[0].probabilities));
    ui.digits.hidden = !many;
    ui.digits.textContent = many
      ? "Each digit: " + a.digits.map((d) => `${d.digit} (${pct(d.confidence)})`).join(", ")
      : "";
    showSeen(a.input_png);
  }

  function showProblem(status, body) {
    ui.digit.textContent = "?";
    ui.digit.dataset.state = "problem";
    ui.chart.hidden = false;
    setBars(null);
    ui.digits.hidden = true;
    if (status === 422 && body.detail && body.detail.blank) {
      showStatus("No digit found. Draw it larger or with darker strokes.", "low");
      showSeen(body.detail.input_png);
    } else {
      showStatus(`The server refused this (${status}): ${body.error || "unknown error"}`, "error");
      showSeen(null);
    }
  }

  function resetAnswer() {
    ui.digit.textContent = "–";
    ui.digit.dataset.state = "empty";
    ui.chart.hidden = false;
    showStatus("Draw a digit to start.", "");
    setBars(null);
    ui.digits.hidden = true;
    showSeen(null);
  }

  // --- keyboard --------------------------------------------------------------------------

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearAll);
  ui.number.addEventListener("change", () => schedule(0));

  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement && ev.target.type !== "checkbox") return;
    const key = ev.key.toLowerCase();
    if ((ev.ctrlKey || ev.metaKey) && key === "z") { ev.preventDefault(); undo(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (key === "delete" || key === "escape" || key === "backspace") { ev.preventDefault(); clearAll(); }
    else if (key === "u") { ui.file.click(); }
    else if (key === "n") { ui.number.checked = !ui.number.checked; schedule(0); }
  });

  buildBars();
  resetAnswer();
  fitCanvas();
  window.addEventListener("resize", fitCanvas);
  loadInfo();
})();
