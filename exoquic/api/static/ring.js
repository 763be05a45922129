// The cluster panel's pictures: the ring (each node an arc sized by its layers,
// in the order a token flows) and one card per node. Built with DOM calls only;
// node names come from the network and are always set as text.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const RING = { size: 200, radius: 72, width: 14, gapDegrees: 4 };
const NODE_COLOURS = 6; // --node-0 … --node-5 in style.css

function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function polar(degrees, radius) {
  const r = (degrees - 90) * Math.PI / 180; // 0° is the top of the circle
  const c = RING.size / 2;
  return [c + radius * Math.cos(r), c + radius * Math.sin(r)];
}

function arcPath(from, to, radius) {
  const [x0, y0] = polar(from, radius);
  const [x1, y1] = polar(to, radius);
  const large = to - from > 180 ? 1 : 0;
  return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${radius} ${radius} 0 ${large} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`;
}

function nodeLabel(node) {
  return node.name || node.id || "node";
}

// The nodes that hold layers, in ring order (by their first layer).
function ringOrder(nodes) {
  return nodes.filter((n) => n.layers).sort((a, b) => a.layers[0] - b.layers[0]);
}

// Which colour each node wears in the picture and on its card: its place in the ring.
function colourIndex(nodes) {
  const index = new Map();
  ringOrder(nodes).forEach((n, i) => index.set(n.id, i % NODE_COLOURS));
  return index;
}

function ringPicture(topology, totalLayers) {
  const ring = ringOrder(topology.nodes || []);
  const picture = svg("svg", { viewBox: `0 0 ${RING.size} ${RING.size}`, role: "img", class: "ring" });
  const serving = topology.status === "serving";
  picture.classList.toggle("serving", serving);
  picture.append(svg("circle", { cx: 100, cy: 100, r: RING.radius, class: "ring-track" }));
  // The token's path: dashes marching clockwise inside the arcs while the ring serves.
  picture.append(svg("circle", { cx: 100, cy: 100, r: RING.radius - 20, class: "ring-flow" }));
  const gap = ring.length > 1 ? RING.gapDegrees : 0;
  ring.forEach((node, i) => picture.append(ringArc(node, i, totalLayers, gap)));
  // Where a token enters each node's layers: an arrowhead on its path.
  for (const node of ring) picture.append(flowArrow((node.layers[0] / totalLayers) * 360));
  const centre = svg("text", { x: 100, y: 96, class: "ring-centre" });
  centre.textContent = `${totalLayers} layers`;
  const status = svg("text", { x: 100, y: 114, class: "ring-status" });
  status.textContent = topology.status || "";
  picture.append(centre, status);
  picture.setAttribute("aria-label", ringDescription(ring, topology.status));
  return picture;
}

function ringArc(node, i, totalLayers, gap) {
  const [first, last] = node.layers;
  const from = (first / totalLayers) * 360 + gap / 2;
  const to = Math.max(from + 0.5, ((last + 1) / totalLayers) * 360 - gap / 2);
  const group = svg("g", { class: `ring-node node-${i % NODE_COLOURS}${node.live === false ? " offline" : ""}${node.self ? " self" : ""}` });
  group.dataset.node = node.id;
  const title = svg("title");
  title.textContent = `${i + 1}. ${nodeLabel(node)}: layers ${first}–${last}${node.live === false ? " (offline)" : ""}`;
  // An arc cannot close on itself: a node holding every layer is a full circle.
  const whole = to - from >= 359.9;
  const shape = whole
    ? svg("circle", { cx: 100, cy: 100, r: RING.radius, class: "ring-arc" })
    : svg("path", { d: arcPath(from, to, RING.radius), class: "ring-arc" });
  group.append(title, shape);
  const [x, y] = polar((from + to) / 2, RING.radius);
  group.append(svg("circle", { cx: x.toFixed(2), cy: y.toFixed(2), r: 10, class: "ring-badge" }));
  const number = svg("text", { x: x.toFixed(2), y: (y + 3.5).toFixed(2), class: "ring-number" });
  number.textContent = String(i + 1);
  group.append(number);
  return group;
}

function flowArrow(degrees) {
  const r = RING.radius - 20;
  const points = [polar(degrees + 5, r), polar(degrees - 3, r - 5), polar(degrees - 3, r + 5)];
  return svg("polygon", { points: points.map(([x, y]) => `${x.toFixed(2)},${y.toFixed(2)}`).join(" "), class: "ring-arrow" });
}

function ringDescription(ring, status) {
  if (!ring.length) return "no plan yet";
  const path = ring.map((n, i) => `${i + 1} ${nodeLabel(n)}`).join(" → ");
  return `ring ${status || ""}: ${path} → back to 1`;
}

// The sentence under the picture: where a token goes.
function tokenPath(topology) {
  const ring = ringOrder(topology.nodes || []);
  if (!ring.length) return "No plan yet: the nodes are still agreeing who holds which layers.";
  if (ring.length === 1) return `Every layer runs on ${nodeLabel(ring[0])}.`;
  const hops = ring.map((n, i) => `${i + 1} ${nodeLabel(n)}`).join(" → ");
  return `A token's path: ${hops} → back to 1, which picks the next token.`;
}

// One node: its place in the ring, name, engine and chip, memory, layers.
function nodeCard(node, totalLayers, colour) {
  const offline = node.live === false;
  const li = el("li", `node${node.self ? " self" : ""}${offline ? " offline" : ""}`);
  li.title = [node.id, node.address].filter(Boolean).join(" @ ");
  if (colour !== undefined) li.style.setProperty("--node", `var(--node-${colour})`);
  const head = el("div", "node-head");
  const badge = el("span", `badge${colour === undefined ? " none" : ` node-${colour}`}`, colour === undefined ? "" : String(colour + 1));
  const name = el("strong", "node-name", nodeLabel(node));
  name.title = nodeLabel(node);
  head.append(badge, name);
  const tags = el("span", "tags");
  if (node.self) tags.append(el("span", "tag", "this node"));
  if (offline) tags.append(el("span", "tag warn", "offline"));
  if (!node.layers) tags.append(el("span", "tag quiet", "no layers"));
  head.append(tags);
  li.append(head, el("div", "engine", [node.engine, node.chip].filter(Boolean).join(" · ") || "engine unknown"));
  li.append(memoryView(node.memory));
  if (node.layers) li.append(...layersView(node.layers, totalLayers));
  return li;
}

// Memory with a label on every number: the model's share (its weights on this
// node, from the model registry), what is free, and the machine's total.
function memoryView(memory) {
  const total = memory?.total;
  const free = memory?.available;
  const model = memory?.model;
  const box = el("div", "memory");
  const facts = el("dl", "facts");
  const fact = (label, value, className) => {
    const item = el("div", className);
    item.append(el("dt", "", label), el("dd", "", value));
    facts.append(item);
  };
  fact("Model", model != null ? formatBytes(model) : "—", "model");
  fact("Free", free != null ? formatBytes(free) : "?", "free");
  fact("Total", total != null ? formatBytes(total) : "?", "total");
  box.append(facts);
  if (total && free != null) box.append(memoryBar(total, free, model || 0));
  return box;
}

function memoryBar(total, free, model) {
  const outer = el("div", "bar stacked");
  outer.title = "model · other use · free";
  const usedByModel = Math.min(model, total - free);
  const parts = [["model", usedByModel], ["other", total - free - usedByModel]];
  for (const [name, bytes] of parts) {
    const part = el("div", `part ${name}`);
    part.style.width = `${Math.max(0, bytes / total) * 100}%`;
    outer.append(part);
  }
  return outer;
}

function layersView([first, last], totalLayers) {
  const label = el("div", "kv", `Layers ${first}–${last} of ${totalLayers} (${last - first + 1})`);
  const layers = el("div", "bar layers");
  const fill = el("div", "fill");
  fill.style.marginLeft = `${(first / totalLayers) * 100}%`;
  fill.style.width = `${((last - first + 1) / totalLayers) * 100}%`;
  layers.append(fill);
  return [label, layers];
}
