// Model text as markdown: marked parses it, DOMPurify keeps only the tags a
// reply needs (no scripts, styles, images, forms or event handlers), and
// highlight.js colours code blocks from their text. Raw HTML in the reply is
// shown as text, never as markup: a model is not a trusted author.
"use strict";

const MARKDOWN_TAGS = [
  "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "strong", "em", "del",
  "code", "pre", "blockquote", "a", "table", "thead", "tbody", "tr", "th", "td",
];
const MARKDOWN_ATTRIBUTES = ["href", "title", "class", "start", "align"];
const SAFE_LINK = /^(https?:|mailto:)/i;

marked.use({
  gfm: true,
  breaks: true, // models often end a line without a blank one after it
  renderer: {
    html(token) { return escapeHTML(token.text); },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName !== "A") return;
  const href = node.getAttribute("href") || "";
  if (!SAFE_LINK.test(href)) node.removeAttribute("href");
  node.setAttribute("target", "_blank");
  node.setAttribute("rel", "noopener noreferrer nofollow");
});

function escapeHTML(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Replaces target's children with `text` rendered as sanitized markdown.
function renderMarkdown(target, text) {
  const html = marked.parse(text);
  const fragment = DOMPurify.sanitize(html, {
    ALLOWED_TAGS: MARKDOWN_TAGS,
    ALLOWED_ATTR: [...MARKDOWN_ATTRIBUTES, "target", "rel"],
    RETURN_DOM_FRAGMENT: true,
  });
  for (const code of fragment.querySelectorAll("pre > code")) decorateCode(code);
  target.replaceChildren(fragment);
}

// A code block gets a header with its language and a copy button; its text is
// highlighted when highlight.js knows the language.
function decorateCode(code) {
  const pre = code.parentElement;
  const named = /language-([\w+#.-]+)/.exec(code.className)?.[1] || "";
  const language = hljs.getLanguage(named) ? named : "";
  const source = code.textContent;
  if (language) {
    code.innerHTML = hljs.highlight(source, { language, ignoreIllegals: true }).value;
  }
  code.className = language ? `hljs language-${language}` : "hljs";
  const block = document.createElement("div");
  block.className = "code-block";
  const header = document.createElement("div");
  header.className = "code-header";
  const label = document.createElement("span");
  label.className = "code-language";
  label.textContent = named || "text";
  header.append(label, copyButton(() => source, "Copy code"));
  pre.replaceWith(block);
  block.append(header, pre);
}

// A button that copies text() and says so for a moment.
function copyButton(text, title = "Copy") {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy ghost small";
  button.textContent = "Copy";
  button.title = title;
  button.addEventListener("click", async () => {
    const ok = await copyText(text());
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  return button;
}

// The Clipboard API needs a secure context; a node opened over plain HTTP on the
// LAN is not one, so fall back to the older selection-based copy there.
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch (_) { /* fall back */ }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok;
}
