// exoquic chat UI: plain JS, no build step. It talks only to this node's own
// OpenAI-compatible API, and renders model text with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = { chats: "exoquic.conversations", current: "exoquic.current", key: "exoquic.apiKey", settings: "exoquic.settings" };
const DEFAULT_SETTINGS = { temperature: 0.7, maxTokens: "", system: "" };
const TOPOLOGY_POLL_MS = 2000;

const state = {
  chats: readJSON(STORE.chats, []),
  currentId: localStorage.getItem(STORE.current),
  settings: { ...DEFAULT_SETTINGS, ...readJSON(STORE.settings, {}) },
  running: null, // AbortController of the generation in progress
};

function readJSON(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch (_) { return fallback; }
}

function saveChats() {
  localStorage.setItem(STORE.chats, JSON.stringify(state.chats));
  localStorage.setItem(STORE.current, state.currentId || "");
}

function currentChat() {
  return state.chats.find((c) => c.id === state.currentId) || null;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- talking to the node

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(STORE.key);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers() });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    if (response.status === 401) showKeyBanner();
    throw new ApiError(response.status, message);
  }
  return response;
}

// Reads a server-sent-events body; calls onEvent with each parsed `data:` payload.
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

// --- conversations (sidebar)

function newChat() {
  const chat = { id: crypto.randomUUID(), title: "New chat", messages: [], updated: Date.now() };
  state.chats.unshift(chat);
  state.currentId = chat.id;
  saveChats();
  return chat;
}

function renderSidebar() {
  const items = state.chats.map((chat) => {
    const li = el("li", chat.id === state.currentId ? "active" : "");
    const open = el("button", "chat-link", chat.title);
    open.type = "button";
    open.title = chat.title;
    open.addEventListener("click", () => { if (!state.running) selectChat(chat.id); });
    const remove = el("button", "chat-delete", "×");
    remove.type = "button";
    remove.title = "Delete conversation";
    remove.setAttribute("aria-label", `Delete ${chat.title}`);
    remove.addEventListener("click", () => deleteChat(chat.id));
    li.append(open, remove);
    return li;
  });
  $("conversations").replaceChildren(...items);
}

function selectChat(id) {
  state.currentId = id;
  saveChats();
  renderSidebar();
  renderMessages();
}

function deleteChat(id) {
  if (state.running && id === state.currentId) state.running.abort();
  state.chats = state.chats.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.chats[0]?.id || null;
  saveChats();
  renderSidebar();
  renderMessages();
}

// --- messages

// Text with ``` fences becomes text and <pre> blocks, built with textContent only.
function fillContent(target, text) {
  const parts = text.split("```");
  target.replaceChildren(...parts.map((part, i) => {
    if (i % 2 === 0) {
      // The line breaks around a fence belong to the fence, not to the text.
      const start = i > 0 && part.startsWith("\n") ? 1 : 0;
      const end = i < parts.length - 1 && part.endsWith("\n") ? part.length - 1 : part.length;
      return document.createTextNode(part.slice(start, end));
    }
    const newline = part.indexOf("\n");
    const code = el("code", "", newline >= 0 ? part.slice(newline + 1) : part);
    const pre = el("pre");
    pre.append(code);
    return pre;
  }));
}

function messageView(message) {
  const li = el("li", `message ${message.role}`);
  li.append(el("div", "role", message.role === "assistant" ? "Assistant" : "You"));
  const content = el("div", "content");
  fillContent(content, message.content);
  li.append(content);
  const meta = el("div", "meta");
  if (message.stats) meta.textContent = statsLine(message.stats);
  if (message.stopped) meta.append(el("span", "tag", "stopped"));
  if (message.error) li.append(el("div", "error", message.error));
  li.append(meta);
  return li;
}

function renderMessages() {
  const chat = currentChat();
  const messages = chat ? chat.messages : [];
  $("messages").replaceChildren(...messages.map(messageView));
  $("empty").hidden = messages.length > 0;
  scrollToEnd();
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function statsLine(stats) {
  const approx = stats.estimated ? "≈" : "";
  const parts = [`TTFT ${stats.ttft.toFixed(2)} s`];
  if (stats.tps) parts.push(`${approx}${stats.tps.toFixed(1)} tok/s`);
  if (stats.tokens) parts.push(`${approx}${stats.tokens} tokens`);
  return parts.join(" · ");
}

// --- sending

function requestBody(chat) {
  const messages = [];
  if (state.settings.system.trim()) messages.push({ role: "system", content: state.settings.system });
  for (const m of chat.messages) if (m.content || m.role === "user") messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value,
    messages,
    temperature: Number(state.settings.temperature),
    stream: true,
    stream_options: { include_usage: true },
  };
  const maxTokens = parseInt(state.settings.maxTokens, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

async function send(text) {
  const chat = currentChat() || newChat();
  if (chat.messages.length === 0) chat.title = text.slice(0, 60);
  chat.messages.push({ role: "user", content: text });
  const body = requestBody(chat);
  const reply = { role: "assistant", content: "" };
  chat.messages.push(reply);
  chat.updated = Date.now();
  saveChats();
  renderSidebar();
  renderMessages();
  const view = $("messages").lastElementChild;
  const content = view.querySelector(".content");
  view.classList.add("streaming");

  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  const timing = { started: performance.now(), first: null, last: null, usage: null, chunks: 0 };
  try {
    const response = await api("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    await readEvents(response.body, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) timing.usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (!delta) return;
      timing.first ??= performance.now();
      timing.last = performance.now();
      timing.chunks += 1;
      reply.content += delta;
      fillContent(content, reply.content);
      $("stats").textContent = liveStats(timing);
      scrollToEnd();
    });
  } catch (err) {
    if (err.name === "AbortError") reply.stopped = true;
    else reply.error = err.message;
  } finally {
    if (timing.first !== null) reply.stats = finalStats(timing);
    state.running = null;
    setRunning(false);
    saveChats();
    renderMessages();
    $("stats").textContent = "";
  }
}

function liveStats(timing) {
  return `TTFT ${((timing.first - timing.started) / 1000).toFixed(2)} s · streaming…`;
}

// tok/s counts the tokens after the first over the time after the first, so
// it measures decoding alone (prefill is what TTFT shows). A stopped stream has
// no usage event; its text chunks (about one per token) stand in, marked "≈".
function finalStats(timing) {
  const estimated = !timing.usage;
  const tokens = timing.usage?.completion_tokens ?? timing.chunks;
  const seconds = (timing.last - timing.first) / 1000;
  return {
    ttft: (timing.first - timing.started) / 1000,
    tps: tokens > 1 && seconds > 0 ? (tokens - 1) / seconds : null,
    tokens,
    estimated,
  };
}

function setRunning(on) {
  $("stop").hidden = !on;
  $("send").disabled = on;
  document.body.classList.toggle("running", on);
}

// --- models, cluster, downloads

async function loadModels() {
  try {
    const { data } = await (await api("/v1/models")).json();
    const previous = $("model").value;
    $("model").replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    if (data.some((m) => m.id === previous)) $("model").value = previous;
    hideBanner();
  } catch (err) {
    if (err.status !== 401) showBanner(`Could not list models: ${err.message}`);
  }
}

function formatBytes(n) {
  if (typeof n !== "number") return "?";
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(0)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

function bar(fraction, className) {
  const outer = el("div", `bar ${className || ""}`);
  const inner = el("div", "fill");
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  outer.append(inner);
  return outer;
}

// One node: name, engine, memory in use, and its slice of the model's layers.
function nodeCard(node, totalLayers) {
  const offline = node.live === false;
  const li = el("li", `node${node.self ? " self" : ""}${offline ? " offline" : ""}`);
  li.title = [node.id, node.address].filter(Boolean).join(" @ ");
  const head = el("div", "node-head");
  head.append(el("span", "dot"), el("strong", "", node.name || node.id || "node"));
  if (node.self) head.append(el("span", "tag", "this node"));
  if (offline) head.append(el("span", "tag warn", "offline"));
  head.append(el("span", "engine", [node.engine, node.chip].filter(Boolean).join(" · ") || "?"));
  li.append(head);
  const total = node.memory?.total;
  const used = total && node.memory.available != null ? total - node.memory.available : null;
  li.append(el("div", "kv", `Memory ${formatBytes(used)} / ${formatBytes(total)}`));
  if (total && used != null) li.append(bar(used / total, "memory"));
  if (node.layers) {
    const [first, last] = node.layers;
    li.append(el("div", "kv", `Layers ${first}–${last} of ${totalLayers}`));
    const layers = el("div", "bar layers");
    const fill = el("div", "fill");
    fill.style.marginLeft = `${(first / totalLayers) * 100}%`;
    fill.style.width = `${((last - first + 1) / totalLayers) * 100}%`;
    layers.append(fill);
    li.append(layers);
  }
  return li;
}

function renderTopology(topology) {
  const nodes = topology.nodes || [];
  const totalLayers = topology.num_layers || Math.max(1, ...nodes.map((n) => (n.layers ? n.layers[1] + 1 : 1)));
  $("plan-version").textContent = topology.plan_version != null ? `plan v${topology.plan_version}` : "";
  const status = $("cluster-status");
  status.hidden = !topology.status;
  status.textContent = topology.status || "";
  status.dataset.state = topology.status || "";
  $("cluster-reason").hidden = !topology.reason;
  $("cluster-reason").textContent = topology.reason || "";
  $("cluster-model").textContent = `${topology.model || ""} · ${nodes.length} node${nodes.length === 1 ? "" : "s"}`;
  $("nodes").replaceChildren(...nodes.map((n) => nodeCard(n, totalLayers)));
  renderDownloads(topology.downloads || []);
}

// One node preparing its shard: downloading (bytes, files, rate), loading, or failed.
function renderDownloads(downloads) {
  const verbs = { loading: "Loading", failed: "Failed" };
  $("downloads").replaceChildren(...downloads.map((d) => {
    const failed = d.phase === "failed";
    const box = el("div", `download-item${failed ? " failed" : ""}`);
    const fraction = d.total ? d.done / d.total : 0;
    const who = d.node ? ` on ${d.node}` : "";
    const parts = [`${verbs[d.phase] || "Downloading"} ${d.model || ""}${who}`];
    if (d.total) parts.push(`: ${formatBytes(d.done)} / ${formatBytes(d.total)} (${(fraction * 100).toFixed(0)}%)`);
    if (d.files_total) parts.push(` · ${d.files_done}/${d.files_total} files`);
    if (d.phase === "downloading" && d.bytes_per_second) parts.push(` · ${formatBytes(d.bytes_per_second)}/s`);
    box.append(el("div", "kv", parts.join("")));
    if (failed && d.error) box.append(el("div", "kv error", d.error));
    box.append(bar(d.phase === "loading" ? 1 : fraction, "download"));
    return box;
  }));
}

async function refreshCluster() {
  try {
    renderTopology(await (await api("/v1/topology")).json());
    setConnection("online", "connected");
  } catch (err) {
    setConnection("offline", err.status === 401 ? "API key needed" : "unreachable");
  }
}

function setConnection(stateName, text) {
  $("connection").dataset.state = stateName;
  $("connection").textContent = text;
}

// --- banners, key dialog, settings

function showBanner(message, action) {
  const banner = $("banner");
  banner.replaceChildren(document.createTextNode(message));
  if (action) banner.append(action);
  banner.hidden = false;
}

function hideBanner() { $("banner").hidden = true; }

function showKeyBanner() {
  const button = el("button", "link", "Enter API key");
  button.type = "button";
  button.addEventListener("click", openKeyDialog);
  showBanner("This node requires an API key. ", button);
}

function openKeyDialog() {
  $("key-input").value = localStorage.getItem(STORE.key) || "";
  $("key-dialog").showModal();
  $("key-input").focus();
}

function setKey(key) {
  if (key) localStorage.setItem(STORE.key, key); else localStorage.removeItem(STORE.key);
  $("key-dialog").close();
  loadModels();
  refreshCluster();
}

function bindSettings() {
  const s = state.settings;
  const save = () => localStorage.setItem(STORE.settings, JSON.stringify(s));
  $("temperature").value = s.temperature;
  $("temperature-value").textContent = Number(s.temperature).toFixed(2);
  $("max-tokens").value = s.maxTokens;
  $("system").value = s.system;
  $("temperature").addEventListener("input", (e) => {
    s.temperature = Number(e.target.value);
    $("temperature-value").textContent = s.temperature.toFixed(2);
    save();
  });
  $("max-tokens").addEventListener("input", (e) => { s.maxTokens = e.target.value; save(); });
  $("system").addEventListener("input", (e) => { s.system = e.target.value; save(); });
}

function autoGrow() {
  const box = $("prompt");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 240)}px`;
}

function bindEvents() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.running) return;
    $("prompt").value = "";
    autoGrow();
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("prompt").addEventListener("input", autoGrow);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.running) state.running.abort();
  });
  $("stop").addEventListener("click", () => state.running?.abort());
  const startChat = () => {
    state.running?.abort();
    newChat();
    renderSidebar();
    renderMessages();
    $("stats").textContent = "";
    $("prompt").focus();
  };
  $("new-chat").addEventListener("click", startChat);
  $("new-chat-compact").addEventListener("click", startChat);
  $("toggle-panel").addEventListener("click", () => document.body.classList.toggle("panel-open"));
  $("close-panel").addEventListener("click", () => document.body.classList.remove("panel-open"));
  $("set-key").addEventListener("click", openKeyDialog);
  $("key-form").addEventListener("submit", (event) => { event.preventDefault(); setKey($("key-input").value.trim()); });
  $("key-clear").addEventListener("click", () => setKey(""));
  $("key-cancel").addEventListener("click", () => $("key-dialog").close());
}

bindSettings();
bindEvents();
renderSidebar();
renderMessages();
loadModels();
refreshCluster();
setInterval(refreshCluster, TOPOLOGY_POLL_MS);
