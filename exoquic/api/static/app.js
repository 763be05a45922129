// exoquic chat UI: plain JS, no build step. It talks only to this node's own
// OpenAI-compatible API. Model text goes through markdown.js (sanitized, never
// executed); everything else is set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = { chats: "exoquic.conversations", current: "exoquic.current", key: "exoquic.apiKey", settings: "exoquic.settings.v2", oldSettings: "exoquic.settings" };
// Used until the node names the model's recommended values (see loadModels).
// Greedy decoding is what small models answer sensibly with; a finite reply
// length keeps a rambling model from filling the whole context.
const FALLBACK_DEFAULTS = { temperature: 0, maxTokens: 1024 };
const TOPOLOGY_POLL_MS = 2000;
const NARROW = matchMedia("(max-width: 720px)"); // the phone layout of style.css
const UNDO_MS = 10000;

const state = {
  chats: readJSON(STORE.chats, []),
  currentId: localStorage.getItem(STORE.current),
  // null means "the model's default"; only what the user changes is stored.
  settings: { temperature: null, maxTokens: null, system: "", ...readSettings() },
  defaults: { ...FALLBACK_DEFAULTS },
  models: [], // what /v1/models says the cluster serves (with sampling defaults)
  catalog: [], // /v1/exoquic/models: every model the picker offers
  pulls: new Map(), // model name -> PullTracker of a pull this page follows
  running: null, // AbortController of the generation in progress
};

function readJSON(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch (_) { return fallback; }
}

// Earlier versions stored every setting, so a stored temperature there is not
// a choice the user made: keep only the system prompt from them.
function readSettings() {
  const current = readJSON(STORE.settings, null);
  if (current) return current;
  const old = readJSON(STORE.oldSettings, {});
  return typeof old.system === "string" ? { system: old.system } : {};
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

function button(className, text, title, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  if (title) { b.title = title; b.setAttribute("aria-label", title); }
  b.addEventListener("click", onClick);
  return b;
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

// Reads a server-sent-events body; calls onEvent with each parsed `data:` payload
// (`bodyPieces` is in models.js).
async function readEvents(body, onEvent) {
  for await (const event of bodyPieces(body, "\n\n")) {
    for (const line of event.split("\n")) {
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
  }
}

// --- conversations (sidebar, a drawer on narrow screens)

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
    const open = button("chat-link", chat.title, "", () => { if (!state.running) selectChat(chat.id); });
    open.title = chat.title;
    const remove = button("chat-delete", "×", `Delete conversation: ${chat.title}`, () => deleteChat(chat.id));
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
  setDrawer(false);
}

// Deleting asks no question but offers Undo for a while, so a slip loses nothing.
function deleteChat(id) {
  if (state.running && id === state.currentId) state.running.abort();
  const index = state.chats.findIndex((c) => c.id === id);
  if (index < 0) return;
  const [chat] = state.chats.splice(index, 1);
  const wasCurrent = state.currentId === id;
  if (wasCurrent) state.currentId = state.chats[0]?.id || null;
  saveChats();
  renderSidebar();
  renderMessages();
  const undo = button("link undo", "Undo", "Restore the conversation", () => {
    state.chats.splice(Math.min(index, state.chats.length), 0, chat);
    if (wasCurrent) state.currentId = chat.id;
    saveChats();
    renderSidebar();
    renderMessages();
    hideBanner();
  });
  showBanner(`Deleted “${chat.title}”. `, undo);
  const banner = $("banner");
  setTimeout(() => { if (banner.contains(undo)) hideBanner(); }, UNDO_MS);
}

function setDrawer(open) {
  const was = document.body.classList.contains("sidebar-open");
  document.body.classList.toggle("sidebar-open", open);
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  if (open && !was) $("new-chat").focus();
}

// --- messages

function messageView(message, index, chat) {
  const li = el("li", `message ${message.role}`);
  li.dataset.index = String(index);
  li.append(el("div", "role", message.role === "assistant" ? "Assistant" : "You"));
  const content = el("div", "content");
  fillContent(content, message);
  li.append(content);
  if (message.error) li.append(el("div", "error", message.error));
  const meta = el("div", "meta");
  if (message.stats) meta.append(el("span", "stats", statsLine(message.stats)));
  if (message.stopped) meta.append(el("span", "tag", "stopped"));
  meta.append(messageActions(message, index, chat));
  li.append(meta);
  return li;
}

// Replies are markdown; what the user typed is shown exactly as typed.
function fillContent(target, message) {
  if (message.role === "assistant") renderMarkdown(target, message.content);
  else target.textContent = message.content;
}

function messageActions(message, index, chat) {
  const actions = el("span", "actions");
  actions.append(copyButton(() => message.content, "Copy message"));
  const last = index === chat.messages.length - 1;
  if (message.role === "assistant" && last) {
    actions.append(button("ghost small regenerate", "Regenerate", "Regenerate this reply", () => regenerate(chat)));
  }
  if (message.role === "user") {
    actions.append(button("ghost small edit", "Edit", "Edit and resend", () => startEdit(chat, index)));
  }
  return actions;
}

function renderMessages() {
  const chat = currentChat();
  const messages = chat ? chat.messages : [];
  $("messages").replaceChildren(...messages.map((m, i) => messageView(m, i, chat)));
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

// Editing a message replaces it, drops everything after it, and asks again.
function startEdit(chat, index) {
  if (state.running) return;
  const view = $("messages").querySelector(`[data-index="${index}"]`);
  const box = el("textarea", "edit-box");
  box.value = chat.messages[index].content;
  box.setAttribute("aria-label", "edit message");
  const save = () => {
    const text = box.value.trim();
    if (!text) return;
    chat.messages = chat.messages.slice(0, index);
    if (index === 0) chat.title = text.slice(0, 60);
    ask(chat, text);
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); save(); }
    if (event.key === "Escape") { event.stopPropagation(); renderMessages(); }
  });
  const row = el("div", "edit-row");
  row.append(button("ghost small", "Cancel", "Cancel editing", renderMessages), button("primary small save-edit", "Save & send", "Save and resend", save));
  view.querySelector(".content").replaceChildren(box, row);
  view.querySelector(".meta").hidden = true;
  box.focus();
}

function regenerate(chat) {
  if (state.running) return;
  const last = chat.messages[chat.messages.length - 1];
  if (last?.role === "assistant") chat.messages.pop();
  generate(chat);
}

// --- sending

function effective(name) {
  const chosen = state.settings[name];
  return chosen === null || chosen === undefined || chosen === "" ? state.defaults[name] : chosen;
}

function requestBody(chat) {
  const messages = [];
  if (state.settings.system.trim()) messages.push({ role: "system", content: state.settings.system });
  for (const m of chat.messages) if (m.content || m.role === "user") messages.push({ role: m.role, content: m.content });
  const body = {
    model: $("model").value,
    messages,
    temperature: Number(effective("temperature")),
    stream: true,
    stream_options: { include_usage: true },
  };
  const maxTokens = parseInt(effective("maxTokens"), 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

function ask(chat, text) {
  if (chat.messages.length === 0) chat.title = text.slice(0, 60);
  chat.messages.push({ role: "user", content: text });
  generate(chat);
}

async function generate(chat) {
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
  view.querySelector(".meta").hidden = true;

  const controller = new AbortController();
  state.running = controller;
  setRunning(true);
  const timing = { started: performance.now(), first: null, last: null, usage: null, chunks: 0 };
  // Markdown is re-rendered at most once a frame, however fast tokens come.
  let drawPending = false;
  const draw = () => { drawPending = false; renderMarkdown(content, reply.content); scrollToEnd(); };
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
      if (!drawPending) { drawPending = true; requestAnimationFrame(draw); }
      $("stats").textContent = liveStats(timing);
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
    state.models = data;
    state.catalog = await loadCatalog();
    fillPicker(pickerRows(state.catalog, data));
    applyModelDefaults();
    hideBanner();
    for (const row of state.catalog) if (row.pulling && !state.pulls.has(row.name)) pull(row);
  } catch (err) {
    if (err.status !== 401) showBanner(`Could not list models: ${err.message}`);
  }
}

// Registry and cached models with sizes and fit; a node without the endpoint
// still offers what it serves.
async function loadCatalog() {
  try {
    return (await (await api("/v1/exoquic/models")).json()).data || [];
  } catch (err) {
    if (err.status === 401) throw err;
    return [];
  }
}

// The picker: loaded models first, then downloaded ones, then those to pull.
function fillPicker(rows) {
  const select = $("model");
  const previous = select.value;
  const groups = PICKER_GROUPS.map(([key, label]) => {
    const group = document.createElement("optgroup");
    group.label = label;
    for (const row of rows.filter((r) => pickerGroup(r) === key)) {
      const option = new Option(optionLabel(row, NARROW.matches), row.id);
      option.dataset.group = key;
      if (row.fit) option.title = row.fit;
      group.append(option);
    }
    return group;
  }).filter((g) => g.children.length);
  select.replaceChildren(...groups);
  const keep = rows.some((r) => r.id === previous) ? previous : rows.find((r) => r.loaded)?.id;
  if (keep) select.value = keep;
  showModelStatus();
}

function selectedRow() {
  return state.catalog.find((r) => r.id === $("model").value) || null;
}

// Beside the picker: the selected model's state and fit, and a Pull button
// for one that is not downloaded yet.
function showModelStatus() {
  const row = selectedRow();
  const status = $("model-status");
  status.hidden = !row;
  if (row) {
    const where = row.loaded ? "loaded" : row.cached ? "downloaded" : "not downloaded";
    status.textContent = [where, fitText(row)].filter(Boolean).join(" · ");
    status.dataset.fit = row.fits === false ? "no" : row.fits === true ? "yes" : "";
    status.title = row.fit || "";
  }
  $("pull").hidden = !row || row.cached || state.pulls.has(row.name);
}

// Pulls a model (POST /api/pull) showing bytes, rate and ETA as they come.
async function pull(row) {
  const tracker = new PullTracker();
  state.pulls.set(row.name, tracker);
  showModelStatus();
  for (const old of $("pulls").children) if (old.dataset.model === row.name) old.remove();
  const box = el("div", "pull-item");
  box.dataset.model = row.name;
  const line = el("div", "kv", `Pulling ${row.name}…`);
  const fill = bar(0, "download");
  box.append(line, fill);
  if (row.fits === false && row.fit) box.append(el("div", "kv warn", row.fit));
  $("pulls").append(box);
  const show = () => {
    line.textContent = `Pulling ${row.name}: ${tracker.text()}`;
    fill.firstChild.style.width = `${tracker.total ? (tracker.completed / tracker.total) * 100 : 0}%`;
  };
  let failure = null;
  try {
    const response = await api("/api/pull", { method: "POST", body: JSON.stringify({ model: row.name }) });
    await readLines(response.body, (obj) => {
      if (obj.error) failure = obj.error;
      tracker.update(obj, performance.now());
      show();
    });
    if (!failure && tracker.status !== "success") failure = "the pull stopped before it finished";
  } catch (err) {
    failure = err.message;
  }
  state.pulls.delete(row.name);
  box.classList.toggle("failed", Boolean(failure));
  line.textContent = failure ? `Could not pull ${row.name}: ${failure}` : `Pulled ${row.name}`;
  if (!failure) {
    fill.firstChild.style.width = "100%";
    setTimeout(() => box.remove(), UNDO_MS); // a failure stays until the next try
  }
  await loadModels();
}

// A node may name the model's recommended sampling in its /v1/models entry
// (`defaults: {temperature, max_tokens}`); otherwise the fallbacks hold.
function applyModelDefaults() {
  const entry = state.models.find((m) => m.id === $("model").value);
  const given = entry?.defaults || {};
  state.defaults = {
    temperature: typeof given.temperature === "number" ? given.temperature : FALLBACK_DEFAULTS.temperature,
    maxTokens: Number.isInteger(given.max_tokens) ? given.max_tokens : FALLBACK_DEFAULTS.maxTokens,
  };
  showSettings();
}

function bar(fraction, className) {
  const outer = el("div", `bar ${className || ""}`);
  const inner = el("div", "fill");
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  outer.append(inner);
  return outer;
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
  $("ring").replaceChildren(ringPicture(topology, totalLayers));
  $("token-path").textContent = tokenPath(topology);
  const colours = colourIndex(nodes);
  $("nodes").replaceChildren(...nodes.map((n) => nodeCard(n, totalLayers, colours.get(n.id))));
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
    const topology = await (await api("/v1/topology")).json();
    renderTopology(topology);
    renderLoaded(loadedModels(await runningModels(), topology, state.catalog));
    setConnection("online", "connected");
  } catch (err) {
    setConnection("offline", err.status === 401 ? "API key needed" : "unreachable");
  }
}

// Ollama's /api/ps; null when the node cannot say (the topology then tells).
async function runningModels() {
  try {
    return await (await api("/api/ps")).json();
  } catch (err) {
    if (err.status === 401) throw err;
    return null;
  }
}

function renderLoaded(models) {
  $("loaded-models").replaceChildren(...models.map((m) => {
    const li = el("li", "loaded-model");
    const head = el("div", "kv");
    head.append(el("strong", "", m.name));
    const facts = [m.size ? formatBytes(m.size) : "", expiryText(m.expires)].filter(Boolean);
    if (facts.length) head.append(el("span", "muted", ` · ${facts.join(" · ")}`));
    const layers = el("ul", "layer-ranges");
    layers.append(...m.nodes.filter((n) => Array.isArray(n.layers)).map((n) => el("li", "", layersText(n))));
    li.append(head, layers);
    return li;
  }));
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

// The fields show what the next request uses: the user's choice, else the
// model's default (marked as such).
function showSettings() {
  const s = state.settings;
  const temperature = Number(effective("temperature"));
  $("temperature").value = temperature;
  $("temperature-value").textContent = temperature.toFixed(2) + (s.temperature === null ? " (default)" : "");
  $("max-tokens").value = s.maxTokens ?? "";
  $("max-tokens").placeholder = `${state.defaults.maxTokens} (default)`;
  $("system").value = s.system;
  $("reset-settings").disabled = s.temperature === null && s.maxTokens === null;
}

function bindSettings() {
  const s = state.settings;
  const save = () => { localStorage.setItem(STORE.settings, JSON.stringify(s)); showSettings(); };
  $("temperature").addEventListener("input", (e) => { s.temperature = Number(e.target.value); save(); });
  $("max-tokens").addEventListener("input", (e) => {
    const n = parseInt(e.target.value, 10);
    s.maxTokens = n > 0 ? n : null;
    localStorage.setItem(STORE.settings, JSON.stringify(s));
    $("reset-settings").disabled = s.temperature === null && s.maxTokens === null;
  });
  $("system").addEventListener("input", (e) => { s.system = e.target.value; localStorage.setItem(STORE.settings, JSON.stringify(s)); });
  $("reset-settings").addEventListener("click", () => { s.temperature = null; s.maxTokens = null; save(); });
  showSettings();
}

function autoGrow() {
  const box = $("prompt");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 240)}px`;
}

function startChat() {
  state.running?.abort();
  newChat();
  renderSidebar();
  renderMessages();
  $("stats").textContent = "";
  setDrawer(false);
  $("prompt").focus();
}

function typing(event) {
  const t = event.target;
  return t instanceof HTMLElement && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
}

// The shortcuts listed in the panel (index.html, "Keyboard shortcuts").
function onShortcut(event) {
  const mod = event.ctrlKey || event.metaKey;
  if (event.key === "Escape") {
    if (state.running) state.running.abort();
    setDrawer(false);
    document.body.classList.remove("panel-open");
  } else if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    startChat();
  } else if (event.key === "/" && !typing(event)) {
    event.preventDefault();
    $("prompt").focus();
  }
}

function bindEvents() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.running) return;
    $("prompt").value = "";
    autoGrow();
    ask(currentChat() || newChat(), text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("prompt").addEventListener("input", autoGrow);
  document.addEventListener("keydown", onShortcut);
  $("stop").addEventListener("click", () => state.running?.abort());
  $("new-chat").addEventListener("click", startChat);
  $("new-chat-compact").addEventListener("click", startChat);
  $("toggle-sidebar").addEventListener("click", () => setDrawer(!document.body.classList.contains("sidebar-open")));
  $("scrim").addEventListener("click", () => setDrawer(false));
  $("model").addEventListener("change", () => { applyModelDefaults(); showModelStatus(); });
  NARROW.addEventListener("change", () => fillPicker(pickerRows(state.catalog, state.models)));
  $("pull").addEventListener("click", () => { const row = selectedRow(); if (row) pull(row); });
  $("toggle-panel").addEventListener("click", () => document.body.classList.toggle("panel-open"));
  $("close-panel").addEventListener("click", () => document.body.classList.remove("panel-open"));
  $("set-key").addEventListener("click", openKeyDialog);
  $("set-key-drawer").addEventListener("click", () => { setDrawer(false); openKeyDialog(); });
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
