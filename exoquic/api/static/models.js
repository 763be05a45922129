// The model picker's pure pieces: the catalog's rows as option labels and
// groups, pull progress (bytes, rate, ETA) from Ollama's NDJSON lines, and the
// loaded models with the layers each node holds. No DOM here beyond what a
// caller passes in; names from the network are only ever set as text.
"use strict";

const PICKER_GROUPS = [
  ["loaded", "Loaded"],
  ["cached", "Downloaded"],
  ["remote", "Not downloaded — pull first"],
];
const RATE_WINDOW_MS = 5000; // the rate is the bytes of the last few seconds
const NEVER_EXPIRES_YEAR = 2318; // the year /api/ps gives a model that stays loaded

function formatBytes(n) {
  if (typeof n !== "number") return "?";
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(0)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

function fitText(row) {
  if (row.fits === true) return "fits";
  if (row.fits === false) return "too big";
  return "";
}

function pickerGroup(row) {
  if (row.loaded) return "loaded";
  return row.cached ? "cached" : "remote";
}

// "smollm2:360m · 258 MiB · fits": what the option shows; `compact` (a phone's
// narrow header) leaves out the size so that the name is never cut.
function optionLabel(row, compact = false) {
  const size = compact || typeof row.size !== "number" ? "" : formatBytes(row.size);
  return [row.name || row.id, size, fitText(row)].filter(Boolean).join(" · ");
}

// The catalog's rows, plus models /v1/models lists that it does not (a node
// without the catalog endpoint, or a model under another name). A /v1/models
// entry is loaded unless it says `loaded: false` (a cached model loaded on demand).
function pickerRows(catalog, served) {
  const rows = [...catalog];
  for (const m of served) {
    if (rows.some((r) => r.id === m.id)) continue;
    const fits = typeof m.fits === "boolean" ? m.fits : null;
    rows.push({ id: m.id, name: m.id, loaded: m.loaded !== false, cached: true, size: m.size_bytes, fits });
  }
  return rows;
}

// Sums an Ollama pull stream's per-file counts; `rate` and `eta` are over the
// last RATE_WINDOW_MS, so a resumed file's earlier bytes do not count as speed.
class PullTracker {
  constructor() { this.files = new Map(); this.samples = []; this.status = ""; }

  update(line, now) {
    if (line.status) this.status = line.status;
    if (line.digest && typeof line.total === "number") {
      this.files.set(line.digest, { total: line.total, completed: line.completed || 0 });
      this.samples.push([now, this.completed]);
      while (this.samples.length > 2 && now - this.samples[0][0] > RATE_WINDOW_MS) this.samples.shift();
    }
  }

  get total() { let n = 0; for (const f of this.files.values()) n += f.total; return n; }
  get completed() { let n = 0; for (const f of this.files.values()) n += f.completed; return n; }

  get rate() {
    if (this.samples.length < 2) return null;
    const [t0, c0] = this.samples[0];
    const [t1, c1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((c1 - c0) * 1000) / (t1 - t0) : null;
  }

  get eta() {
    const rate = this.rate;
    return rate ? (this.total - this.completed) / rate : null;
  }

  text() {
    const { total, completed } = this;
    if (!total) return this.status;
    const parts = [`${formatBytes(completed)} / ${formatBytes(total)} (${((completed / total) * 100).toFixed(0)}%)`];
    const rate = this.rate;
    if (rate) parts.push(`${formatBytes(rate)}/s`);
    const eta = this.eta;
    if (eta !== null && completed < total) parts.push(`ETA ${durationText(eta)}`);
    return parts.join(" · ");
  }
}

function durationText(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// Yields the text of a streamed body between each `separator` (a piece left
// unterminated at the end is dropped: NDJSON and server-sent events end theirs).
async function* bodyPieces(body, separator) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.indexOf(separator)) >= 0) {
      yield buffer.slice(0, cut);
      buffer = buffer.slice(cut + separator.length);
    }
    if (done) return;
  }
}

// Calls onLine with each object of an NDJSON body.
async function readLines(body, onLine) {
  for await (const piece of bodyPieces(body, "\n")) {
    const line = piece.trim();
    if (line) onLine(JSON.parse(line));
  }
}

// The loaded models and which layers each node holds. An /api/ps entry may
// name its nodes itself (`nodes: [{name, layers: [first, last]}]`); otherwise
// the ring of /v1/topology is the loaded model's (`topology.model`).
function loadedModels(ps, topology, catalog) {
  const idOf = (name) => catalog.find((r) => r.name === name || r.id === name)?.id || name;
  const models = (ps?.models || []).map((m) => ({
    id: idOf(m.model || m.name),
    name: m.name || m.model,
    size: m.size,
    expires: m.expires_at,
    nodes: Array.isArray(m.nodes) ? m.nodes : null,
  }));
  if (!models.length && topology?.model) models.push({ id: topology.model, name: topology.model, nodes: null });
  const ring = (topology?.nodes || []).filter((n) => n.layers);
  for (const m of models) {
    if (!m.nodes) m.nodes = m.id === topology?.model || models.length === 1 ? ring : [];
  }
  return models;
}

function expiryText(expires) {
  if (!expires) return "";
  const when = new Date(expires);
  if (Number.isNaN(when.getTime())) return "";
  if (when.getUTCFullYear() >= NEVER_EXPIRES_YEAR) return "stays loaded";
  return `until ${when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

function layersText(node) {
  const [first, last] = node.layers;
  return `${node.name || node.id || "node"}: layers ${first}\u2013${last}`;
}
