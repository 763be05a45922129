// exoquic chat UI: plain JS, no build step. Talks to the node's own OpenAI API.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "exoquic.conversation";
const KEY_STORE = "exoquic.apiKey";

let conversation = JSON.parse(localStorage.getItem(STORE) || "[]");
let running = null; // AbortController of the generation in progress

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    if (response.status === 401) message += " (set the API key with the button above)";
    throw new Error(message);
  }
  return response;
}

function save() { localStorage.setItem(STORE, JSON.stringify(conversation)); }

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function addBubble(role, content) {
  const li = document.createElement("li");
  li.className = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const text = document.createElement("span");
  text.className = "content";
  text.textContent = content;
  li.append(label, text);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return text;
}

function render() {
  $("messages").replaceChildren();
  for (const m of conversation) addBubble(m.role, m.content);
}

async function loadModels() {
  try {
    const { data } = await (await api("/v1/models")).json();
    $("model").replaceChildren(...data.map((m) => new Option(m.id, m.id)));
  } catch (err) { showError(err.message); }
}

// Reads an SSE body and calls onEvent with each parsed `data:` payload.
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  showError("");
  conversation.push({ role: "user", content: text });
  addBubble("user", text);
  const reply = { role: "assistant", content: "" };
  const out = addBubble("assistant", "");
  running = new AbortController();
  setRunning(true);
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      signal: running.signal,
      body: JSON.stringify({
        model: $("model").value,
        messages: conversation,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    await readEvents(response.body, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (!delta) return;
      firstToken ??= performance.now();
      reply.content += delta;
      out.textContent = reply.content;
      out.parentElement.scrollIntoView({ block: "end" });
    });
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    running = null;
    setRunning(false);
    conversation.push(reply);
    save();
    showStats(started, firstToken, usage);
  }
}

function showStats(started, firstToken, usage) {
  if (firstToken === null) { $("stats").textContent = ""; return; }
  const ttft = (firstToken - started) / 1000;
  const decodeSeconds = (performance.now() - firstToken) / 1000;
  let line = `TTFT ${ttft.toFixed(2)} s`;
  if (usage && usage.completion_tokens > 1 && decodeSeconds > 0) {
    line += ` · ${((usage.completion_tokens - 1) / decodeSeconds).toFixed(1)} tok/s`;
    line += ` · ${usage.completion_tokens} tokens`;
  }
  $("stats").textContent = line;
}

function setRunning(on) {
  $("stop").hidden = !on;
  $("send").disabled = on;
}

function formatBytes(n) {
  if (!n && n !== 0) return "?";
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${(n / (1 << 20)).toFixed(0)} MiB`;
}

async function refreshCluster() {
  try {
    const topology = await (await api("/v1/topology")).json();
    $("plan-version").textContent = topology.plan_version != null ? `plan v${topology.plan_version}` : "";
    $("nodes").replaceChildren(...topology.nodes.map((node) => {
      const row = document.createElement("tr");
      const layers = node.layers ? `${node.layers[0]}–${node.layers[1]}` : "—";
      const cells = [
        `${node.name || ""}${node.self ? " (this node)" : ""}`,
        node.engine || "?",
        `${formatBytes(node.memory?.available)} / ${formatBytes(node.memory?.total)}`,
        layers,
      ];
      for (const value of cells) {
        const td = document.createElement("td");
        td.textContent = value;
        row.append(td);
      }
      row.title = node.id;
      return row;
    }));
    renderDownloads(topology.downloads || []);
  } catch (_) { /* the next poll retries */ }
}

function renderDownloads(downloads) {
  $("downloads").replaceChildren(...downloads.map((d) => {
    const label = document.createElement("label");
    label.textContent = `${d.model}: ${formatBytes(d.done)} / ${formatBytes(d.total)}`;
    const bar = document.createElement("progress");
    bar.max = d.total || 1;
    bar.value = d.done || 0;
    label.append(bar);
    return label;
  }));
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || running) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => running?.abort());
$("new-chat").addEventListener("click", () => {
  running?.abort();
  conversation = [];
  save();
  render();
  $("stats").textContent = "";
});
$("set-key").addEventListener("click", () => {
  const key = prompt("API key (leave empty to clear)", localStorage.getItem(KEY_STORE) || "");
  if (key === null) return;
  if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
  loadModels();
});

render();
loadModels();
refreshCluster();
setInterval(refreshCluster, 2000);
