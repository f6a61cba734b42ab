// darkroom playground: the public API from a browser, nothing else. No build step, no
// dependency, no request to any host but this one (the result image may live in the bucket).
"use strict";

const KEY_STORE = "darkroom.apiKey";
const HISTORY_STORE = "darkroom.history";
const HISTORY_MAX = 50;
const MODEL = "krea-2-turbo";
const FALLBACK_SIZES = ["1:1", "4:3", "3:4", "5:4", "4:5", "2:3", "3:2", "9:16", "16:9", "1:2", "2:1"];

const $ = (id) => document.getElementById(id);
let following = null; // the AbortController of the task being watched

// Words for the contract's error codes (HTTP errors and failed tasks alike).
const WORDS = {
  unauthorized: () => "The server refused this API key. Check it, or ask the server's operator for one.",
  insufficient_quota: () => "Not enough credits for this image.",
  rate_limit_exceeded: (e) => `Too many requests just now. Try again in ${e.retry || "a few"} seconds.`,
  content_policy_violation: () => "The content policy refused this prompt. Try wording it differently.",
  model_access_denied: () => "This key may not use this model.",
  permission_denied: () => "That task belongs to another account.",
  task_not_found: () => "That task no longer exists: tasks and their images are kept for a limited time.",
  invalid_task_id: () => "That is not a task id.",
  service_unavailable: (e) => `The server is busy or has no worker for this model. Try again in ${e.retry || "a few"} seconds.`,
  invalid_parameters: (e) => `The server could not use these settings: ${e.message}`,
  request_cancelled: (e) => `The task was cancelled: ${e.message || "by the server's operator"}.`,
  task_not_cancellable: (e) => `${e.message}.`,
  generation_timeout: () => "The generation took too long and was stopped. Try again.",
  internal_error: () => "The server failed unexpectedly. Try again in a moment.",
};

function words(error) {
  const say = WORDS[error.code];
  if (say) return say(error);
  if (error.message) return error.message;
  return `Something went wrong (${error.code || "unknown error"}).`;
}

function key() {
  return $("api-key").value.trim();
}

function authHeaders() {
  return { Authorization: `Bearer ${key()}` };
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw { code: "network", message: "Cannot reach the server. Is it running?" };
  }
  if (!response.ok) {
    let error = { code: `http_${response.status}`, message: response.statusText };
    try {
      error = (await response.json()).error || error;
    } catch (_) { /* not JSON: keep the status */ }
    error.retry = response.headers.get("Retry-After");
    throw error;
  }
  return response;
}

// ---- the page's state on screen ----

function showError(error) {
  const box = $("error");
  box.textContent = words(error);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function showProgress(task) {
  const value = task.progress || 0;
  const info = task.task_info || {};
  $("progress").value = value;
  $("progress-text").textContent = `${value}%`;
  const eta = info.estimated_time;
  const left = eta && task.status !== "completed" && task.status !== "failed" ? ` · about ${eta} s left` : "";
  const place = task.status === "pending" && info.queue_position ? ` · #${info.queue_position} in the queue` : "";
  $("status").textContent = `${task.status} · ${value}%${place}${left}`;
  // Cancel: only while the task waits, and only where the server lets its model's be cancelled.
  shown = task.id;
  $("cancel").hidden = !(task.status === "pending" && info.can_cancel);
}

let shown = null; // the task the progress shows

async function cancelShown() {
  if (!shown) return;
  $("cancel").disabled = true;
  try {
    const response = await api(`/v1/tasks/${shown}/cancel`, { method: "POST" });
    if (following) following.abort();
    finish(await response.json());
  } catch (e) {
    showError(e); // e.g. it started generating meanwhile: it goes on
  } finally {
    $("cancel").disabled = false;
  }
}

function linkExpiry(url) {
  try {
    const params = new URL(url, location.href).searchParams;
    if (params.has("expires")) return new Date(Number(params.get("expires")) * 1000);
    const date = params.get("X-Amz-Date");
    const seconds = Number(params.get("X-Amz-Expires"));
    if (date && seconds) {
      const m = date.match(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/);
      if (m) return new Date(Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6]) + seconds * 1000);
    }
  } catch (_) { /* an unexpected link: no expiry shown */ }
  return null;
}

function showResult(task) {
  const url = task.results && task.results[0];
  if (!url) return;
  const img = $("result-image");
  img.alt = `Generated image: ${promptOf(task.id) || task.id}`;
  img.onload = () => { $("result-size").textContent = `${img.naturalWidth} × ${img.naturalHeight}`; };
  img.src = url;
  $("result-link").href = url;
  $("result-seed").textContent = task.seed ?? "—";
  $("result-id").textContent = task.id;
  const expiry = linkExpiry(url);
  $("result-expiry").textContent = expiry ? expiry.toLocaleString() : "24 hours after completion";
  $("result").hidden = false;
  $("result-empty").hidden = true;
}

// ---- history (this browser's tasks, in local storage) ----

function history() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_STORE)) || [];
  } catch (_) {
    return [];
  }
}

function promptOf(id) {
  const entry = history().find((h) => h.id === id);
  return entry && entry.prompt;
}

function remember(task, extra = {}) {
  const all = history();
  const at = all.findIndex((h) => h.id === task.id);
  const entry = { ...(at >= 0 ? all[at] : {}), id: task.id, status: task.status, seed: task.seed, created: task.created, ...extra };
  if (at >= 0) all[at] = entry; else all.unshift(entry);
  localStorage.setItem(HISTORY_STORE, JSON.stringify(all.slice(0, HISTORY_MAX)));
  renderHistory();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const entry of history()) {
    const item = $("history-item").content.cloneNode(true);
    item.querySelector(".h-prompt").textContent = entry.prompt || entry.id;
    const when = entry.created ? new Date(entry.created * 1000).toLocaleString() : "";
    item.querySelector(".h-meta").textContent = [entry.status, entry.size, entry.quality, when].filter(Boolean).join(" · ");
    const button = item.querySelector("button");
    button.dataset.taskId = entry.id;
    button.addEventListener("click", () => open(entry.id));
    list.append(item);
  }
}

// ---- following a task: the events stream, or polling where the server has none ----

async function follow(id) {
  if (following) following.abort();
  const control = new AbortController();
  following = control;
  let lastId = null;
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(`/v1/tasks/${id}/events`, { headers, signal: control.signal });
      if (response.status === 204) return finish(await getTask(id, control));
      if (!(response.headers.get("content-type") || "").includes("text/event-stream")) break;
      const end = await readStream(response, (task, eventId) => {
        lastId = eventId;
        attempt = 0;
        update(task);
      });
      if (end) return finish(end);
      // The stream ended early (its server is restarting): reconnect where we were.
    }
    await poll(id, control);
  } catch (e) {
    if (e.name === "AbortError") return;
    if (e.code === "not_found") return poll(id, control); // a server without the stream
    showError(e);
    busy(false);
  }
}

async function readStream(response, onTask) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  let eventId = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (data.length) {
          const task = JSON.parse(data.join("\n"));
          data = [];
          onTask(task, eventId);
          if (task.status === "completed" || task.status === "failed") return task;
        }
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } else if (line.startsWith("id:")) {
        eventId = line.slice(3).trim();
      }
    }
  }
}

async function getTask(id, control) {
  return (await api(`/v1/tasks/${id}`, { signal: control && control.signal })).json();
}

async function poll(id, control) {
  for (;;) {
    const task = await getTask(id, control);
    update(task);
    if (task.status === "completed" || task.status === "failed") return finish(task);
    const eta = (task.task_info && task.task_info.estimated_time) || 4;
    await new Promise((resolve) => setTimeout(resolve, Math.min(Math.max(eta * 250, 500), 5000)));
    if (control.signal.aborted) return;
  }
}

function update(task) {
  showProgress(task);
  remember(task);
}

function finish(task) {
  update(task);
  busy(false);
  if (task.status === "completed") {
    const url = task.results && task.results[0];
    const expiry = url && linkExpiry(url);
    remember(task, { url, expires: expiry ? expiry.getTime() : null });
    showResult(task);
  } else if (task.status === "failed") {
    showError(task.error || { code: "unknown_error" });
  }
}

async function open(id) {
  clearError();
  try {
    const task = await getTask(id);
    showProgress(task);
    if (task.status === "completed" || task.status === "failed") finish(task);
    else { busy(true); follow(id); }
  } catch (e) {
    showError(e);
  }
}

// ---- the form ----

function busy(on) {
  $("generate").disabled = on;
  $("generate").textContent = on ? "Generating…" : "Generate";
}

async function submit(event) {
  event.preventDefault();
  clearError();
  if (!key()) {
    showError({ message: "Enter your API key first." });
    $("api-key").focus();
    return;
  }
  const prompt = $("prompt").value;
  if (!prompt.trim()) {
    showError({ message: "Write a prompt first." });
    $("prompt").focus();
    return;
  }
  const body = { model: MODEL, prompt, size: $("size").value, quality: $("quality").value, nsfw_check: $("nsfw-check").checked };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  busy(true);
  $("result").hidden = true;
  $("result-empty").hidden = false;
  try {
    const response = await api("/v1/images/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
      body: JSON.stringify(body),
    });
    const task = await response.json();
    remember(task, { prompt, size: body.size, quality: body.quality });
    showProgress(task);
    follow(task.id);
  } catch (e) {
    showError(e);
    busy(false);
  }
}

async function loadSizes() {
  let sizes = FALLBACK_SIZES;
  try {
    const doc = await (await fetch("/openapi.json")).json();
    const schema = doc.paths["/v1/images/generations"].post.requestBody.content["application/json"].schema;
    sizes = schema.properties.size.enum || sizes;
  } catch (_) { /* the built-in list */ }
  $("size").replaceChildren(...sizes.map((s) => new Option(s, s, s === "1:1", s === "1:1")));
}

function start() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("input", () => localStorage.setItem(KEY_STORE, key()));
  $("key-form").addEventListener("submit", (e) => { e.preventDefault(); $("prompt").focus(); });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    $("api-key").focus();
  });
  $("generate-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancelShown);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("generate-form").requestSubmit();
  });
  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_STORE);
    renderHistory();
  });
  loadSizes();
  renderHistory();
}

document.addEventListener("DOMContentLoaded", start);
