// The PixelQA demo page: uploads, prompts drawn on frames, questions, polling of a running turn, results.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;          // the server's /api/state
let prompts = [];          // prompts of the next question: {kind, frame, x, y | x1, y1, x2, y2 | canvas}
let drag = null;           // a box or mask stroke in progress
let player = null;

function showMessage(text) {
  const el = $("message");
  el.textContent = text || "";
  el.hidden = !text;
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  } catch (e) {
    throw new Error("the demo server cannot be reached");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    throw new Error((data && data.error) || `the server answered ${response.status}`);
  }
  return data;
}

function postJSON(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function frameIndex() { return Number($("frame-slider").value); }

function frameURL(pos) {
  if (state.latest > 0 && $("show-masks").checked) return `/api/overlay/${state.latest}/${pos}`;
  return `/api/frame/${pos}`;
}

function showFrame() {
  if (!state || !state.media) return;
  const pos = frameIndex();
  $("frame-img").src = frameURL(pos);
  $("frame-label").textContent = `frame ${pos + 1} / ${state.media.frames} (${state.media.names[pos]})`;
  drawPrompts();
}

function drawPrompts() {
  const canvas = $("draw");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const pos = frameIndex();
  const unit = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 100));
  prompts.forEach((p, i) => {
    if (p.frame !== pos) return;
    ctx.strokeStyle = "#ff2d95"; ctx.fillStyle = "#ff2d95"; ctx.lineWidth = unit / 2;
    if (p.kind === "point") {
      ctx.beginPath(); ctx.arc(p.x, p.y, unit * 1.5, 0, 2 * Math.PI); ctx.fill();
    } else if (p.kind === "box") {
      ctx.strokeRect(p.x1, p.y1, p.x2 - p.x1, p.y2 - p.y1);
    } else {
      ctx.globalAlpha = 0.5; ctx.drawImage(p.canvas, 0, 0); ctx.globalAlpha = 1;
    }
  });
  if (drag && drag.kind === "box" && drag.moved) {
    ctx.strokeStyle = "#ff2d95"; ctx.setLineDash([unit, unit]);
    ctx.strokeRect(drag.x0, drag.y0, drag.x - drag.x0, drag.y - drag.y0); ctx.setLineDash([]);
  }
}

function listPrompts() {
  const list = $("prompt-list");
  list.replaceChildren();
  prompts.forEach((p, i) => {
    const li = document.createElement("li");
    const where = `frame ${p.frame + 1}`;
    if (p.kind === "point") li.textContent = `point (${Math.round(p.x)}, ${Math.round(p.y)}) on ${where}`;
    else if (p.kind === "box") li.textContent = `box (${Math.round(p.x1)}, ${Math.round(p.y1)})-(${Math.round(p.x2)}, ${Math.round(p.y2)}) on ${where}`;
    else li.textContent = `mask on ${where}`;
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "remove";
    remove.addEventListener("click", () => { prompts.splice(i, 1); listPrompts(); drawPrompts(); });
    li.appendChild(remove);
    list.appendChild(li);
  });
  const llm = state && state.media && state.media.llm_positions;
  $("prompt-hint").textContent = llm
    ? `New prompts in this conversation can go on the frames the model saw: ${llm.map((p) => p + 1).join(", ")}.`
    : "Prompts get the next free object ids ([0], [1], ...) in the order drawn.";
}

function toMedia(event) {
  const canvas = $("draw");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * canvas.width;
  const y = ((event.clientY - box.top) / box.height) * canvas.height;
  return { x: Math.min(Math.max(x, 0), canvas.width), y: Math.min(Math.max(y, 0), canvas.height) };
}

function tool() { return document.querySelector("input[name=tool]:checked").value; }

function maskFor(frame) {
  let p = prompts.find((q) => q.kind === "mask" && q.frame === frame && q.open);
  if (!p) {
    const c = document.createElement("canvas");
    c.width = $("draw").width; c.height = $("draw").height;
    p = { kind: "mask", frame, canvas: c, open: true };
    prompts.push(p);
  }
  return p;
}

function paint(p, from, to) {
  const ctx = p.canvas.getContext("2d");
  ctx.strokeStyle = "#ffffff"; ctx.lineCap = "round";
  ctx.lineWidth = Math.max(3, Math.round(Math.max(p.canvas.width, p.canvas.height) / 25));
  ctx.beginPath(); ctx.moveTo(from.x, from.y); ctx.lineTo(to.x, to.y); ctx.stroke();
}

function onDown(event) {
  if (!state || !state.media || event.button !== 0) return;
  const at = toMedia(event);
  if (tool() === "mask") {
    const p = maskFor(frameIndex());
    drag = { kind: "mask", prompt: p, last: at };
    paint(p, at, at);
  } else {
    drag = { kind: "box", x0: at.x, y0: at.y, x: at.x, y: at.y, moved: false, sx: event.clientX, sy: event.clientY };
  }
  drawPrompts();
}

function onMove(event) {
  if (!drag) return;
  const at = toMedia(event);
  if (drag.kind === "mask") { paint(drag.prompt, drag.last, at); drag.last = at; }
  else {
    drag.x = at.x; drag.y = at.y;
    drag.moved = drag.moved || Math.abs(event.clientX - drag.sx) + Math.abs(event.clientY - drag.sy) > 6;
  }
  drawPrompts();
}

function onUp(event) {
  if (!drag) return;
  const d = drag; drag = null;
  if (d.kind === "box") {
    const frame = frameIndex();
    if (d.moved && Math.abs(d.x - d.x0) >= 1 && Math.abs(d.y - d.y0) >= 1) {
      prompts.push({ kind: "box", frame, x1: Math.min(d.x0, d.x), y1: Math.min(d.y0, d.y), x2: Math.max(d.x0, d.x), y2: Math.max(d.y0, d.y) });
    } else {
      prompts.push({ kind: "point", frame, x: d.x0, y: d.y0 });
    }
  }
  listPrompts(); drawPrompts();
}

function render(newState) {
  state = newState;
  const media = state.media;
  $("limits").textContent = `Uploads up to ${state.limits.max_mib} MiB; videos up to ${state.limits.max_video_frames} frames.`;
  const select = $("sample-select");
  if (!select.options.length) {
    state.samples.forEach((name) => { const o = document.createElement("option"); o.value = name; o.textContent = name; select.appendChild(o); });
  }
  $("viewer").hidden = !media; $("tools").hidden = !media;
  $("frame-controls").hidden = !media || media.frames < 2;
  $("media-name").textContent = media ? `${media.name}: ${media.kind}, ${media.frames} frame(s), ${media.size[1]}x${media.size[0]}` : "No media yet.";
  if (media) {
    const canvas = $("draw");
    if (canvas.width !== media.size[1] || canvas.height !== media.size[0]) { canvas.width = media.size[1]; canvas.height = media.size[0]; }
    const slider = $("frame-slider");
    slider.max = String(media.frames - 1);
    if (frameIndex() > media.frames - 1) slider.value = "0";
  }
  const chat = $("chat");
  chat.replaceChildren();
  state.turns.forEach((t) => {
    const li = document.createElement("li");
    const q = document.createElement("div"); q.className = "user"; q.textContent = `You: ${t.text}`;
    const a = document.createElement("div"); a.className = "assistant"; a.textContent = `PixelQA: ${t.answer}`;
    li.append(q, a); chat.appendChild(li);
  });
  $("answer").textContent = state.turns.length ? state.turns[state.turns.length - 1].answer : "";
  const memory = $("memory");
  memory.replaceChildren();
  state.memory.forEach((m) => {
    const li = document.createElement("li");
    li.className = "memory-item" + (m.new ? " new" : ""); li.dataset.id = String(m.id);
    const img = document.createElement("img"); img.src = `${m.thumb}?turn=${state.latest}`; img.alt = `object [${m.id}]`;
    const label = document.createElement("span"); label.textContent = `[${m.id}] ${m.frames}`;
    li.append(img, label); memory.appendChild(li);
  });
  const dl = state.downloads;
  [["dl-json", "json"], ["dl-zip", "zip"], ["dl-overlay", "overlay"]].forEach(([id, key]) => {
    const a = $(id); a.hidden = !dl;
    if (dl) { a.href = dl[key]; a.setAttribute("download", ""); }
  });
  if (dl) $("dl-overlay").textContent = dl.overlay_kind === "mp4" ? "overlay video (MP4)" : "overlay (PNG)";
  const p = state.progress;
  $("progress").hidden = !p.running;
  const frames = p.total > 0 ? `, SAM frame ${p.done} / ${p.total}` : "";
  $("progress-text").textContent = p.running ? `${p.phase}${frames} (${p.elapsed} s)` : "";
  const bar = document.querySelector("#progress progress");
  if (p.total > 0) { bar.max = p.total; bar.value = p.done; } else { bar.removeAttribute("value"); }
  $("ask").disabled = p.running;
  listPrompts(); showFrame();
}

async function poll() {
  for (;;) {
    const s = await api("/api/state");
    render(s);
    if (!s.progress.running) {
      if (s.progress.error) showMessage(s.progress.error);
      return s;
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function guarded(work) {
  showMessage("");
  try { await work(); } catch (e) { showMessage(e.message); }
}

function promptPayload(p) {
  if (p.kind === "mask") return { kind: "mask", frame: p.frame, png: p.canvas.toDataURL("image/png") };
  const { kind, frame, x, y, x1, y1, x2, y2 } = p;
  return p.kind === "point" ? { kind, frame, x, y } : { kind, frame, x1, y1, x2, y2 };
}

function loaded(s) { prompts = []; $("frame-slider").value = "0"; render(s); }

window.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", () => guarded(async () => {
    const file = $("file").files[0];
    if (!file) return;
    $("file").value = "";
    if (state && file.size > state.limits.max_mib * 1048576) {
      throw new Error(`upload: ${file.name} is too large; expected at most ${state.limits.max_mib} MiB`);
    }
    $("media-name").textContent = `uploading ${file.name} ...`;
    loaded(await api(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file }));
  }));
  $("sample-load").addEventListener("click", () => guarded(async () => loaded(await postJSON("/api/sample", { name: $("sample-select").value }))));
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const sent = prompts.slice();
      render(await postJSON("/api/ask", { text: $("question").value, prompts: sent.map(promptPayload) }));
      const s = await poll();
      if (!s.progress.error) { prompts = prompts.filter((p) => !sent.includes(p)); $("question").value = ""; listPrompts(); drawPrompts(); }
    });
  });
  $("reset").addEventListener("click", () => guarded(async () => { prompts = []; render(await postJSON("/api/reset", {})); }));
  $("clear-prompts").addEventListener("click", () => { prompts = []; listPrompts(); drawPrompts(); });
  $("frame-slider").addEventListener("input", () => { prompts.forEach((p) => { p.open = false; }); showFrame(); });
  $("show-masks").addEventListener("change", showFrame);
  $("play").addEventListener("click", () => {
    if (player) { clearInterval(player); player = null; $("play").textContent = "Play"; return; }
    $("play").textContent = "Pause";
    player = setInterval(() => {
      const slider = $("frame-slider");
      slider.value = String((frameIndex() + 1) % (Number(slider.max) + 1));
      showFrame();
    }, 1000 / Math.min(state.media.fps || 4, 12));
  });
  const canvas = $("draw");
  canvas.addEventListener("pointerdown", onDown);
  window.addEventListener("pointermove", onMove);
  window.addEventListener("pointerup", onUp);
  // the session's folder goes when the page does
  window.addEventListener("pagehide", () => navigator.sendBeacon("/api/end"));
  guarded(async () => render(await api("/api/state")));
});
