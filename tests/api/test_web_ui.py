"""The chat UI in a real headless Chromium against a real node.

Uses Debian's /usr/bin/chromium through Playwright (its own browser download
does not work here). Screenshots go to test-output/ for a human to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import PULLABLE, PULLABLE_BYTES, REPO, RunningNode
from fixtures.hub_server import HubServer
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from exoquic.api.catalog import ClusterMemory, catalog_rows
from exoquic.models.registry import DEFAULT_MODEL_ID, list_models

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / "test-output"
REPLY_TIMEOUT_MS = 180_000

if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, api_node: RunningNode) -> Iterator[object]:
    """A fresh page on the UI with the node's API key stored, collecting console errors."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_init_script(f"localStorage.setItem('exoquic.apiKey', {api_node.api_key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(api_node.url)
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_chat_streams_a_greedy_answer_and_shows_the_cluster(
    page: Page, api_node: RunningNode
) -> None:
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#model")).to_have_value(DEFAULT_MODEL_ID)
    nodes = page.locator("#nodes li")
    expect(nodes).to_have_count(1)
    expect(nodes.first).to_contain_text("this node")
    expect(nodes.first).to_contain_text("Layers 0\u201329 of 30")
    expect(page.locator("#cluster-status")).to_have_text("serving")
    loaded = page.locator("#loaded-models .loaded-model")
    expect(loaded).to_have_count(1)
    expect(loaded).to_contain_text("smollm2:135m")
    expect(loaded).to_contain_text("stays loaded")
    expect(loaded.locator(".layer-ranges li")).to_have_text([re.compile(r": layers 0\u201329$")])
    # A new user's first question, at the UI's defaults (greedy), gets a sensible answer.
    expect(page.locator("#temperature-value")).to_have_text("0.00 (default)")

    send(page, "What is the capital of France?")
    stop = page.locator("#stop")
    expect(stop).to_be_visible()  # the generation is running
    reply = page.locator(".message.assistant .content").last
    expect(reply).to_contain_text("Paris", timeout=REPLY_TIMEOUT_MS)
    expect(stop).to_be_hidden(timeout=REPLY_TIMEOUT_MS)
    meta = page.locator(".message.assistant .meta").last
    expect(meta).to_have_text(re.compile(r"TTFT \d+\.\d\d s · [\d.]+ tok/s · \d+ tokens"))
    screenshot(page, "ui-chat.png")

    page.reload()
    expect(page.locator(".message.user .content")).to_have_text("What is the capital of France?")
    expect(page.locator(".message.assistant .content").last).to_contain_text("Paris")
    expect(page.locator("#conversations li")).to_have_count(1)
    api_node.wait_idle(timeout=10)


def test_stop_button_ends_the_generation_and_frees_the_node(
    page: Page, api_node: RunningNode
) -> None:
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "500")
    send(page, "Write a long story about a dragon.")
    reply = page.locator(".message.assistant .content").last
    expect(reply).to_have_text(re.compile(r"\w+\W+\w+\W+\w+"), timeout=REPLY_TIMEOUT_MS)
    assert api_node.health()["kv_caches"] == 1
    page.click("#stop")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".message.assistant .meta .tag").last).to_have_text("stopped")
    api_node.wait_idle(timeout=10)
    screenshot(page, "ui-stopped.png")


def test_key_prompt_when_the_node_needs_one(browser: Browser, api_node: RunningNode) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(api_node.url)
    expect(page.locator("#banner")).to_contain_text("requires an API key")
    expect(page.locator("#connection")).to_have_text("API key needed")
    page.click("#banner button")
    page.fill("#key-input", api_node.api_key or "")
    page.click("#key-save")
    expect(page.locator("#model")).to_have_value(DEFAULT_MODEL_ID)
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#banner")).to_be_hidden()
    context.close()


RING = {
    "model": "smollm2-135m-instruct",
    "num_layers": 30,
    "plan_version": 4,
    "status": "loading",
    "reason": None,
    "nodes": [
        {
            "id": "n1",
            "name": "studio",
            "self": True,
            "engine": "mlx",
            "memory": {"total": 64 * 2**30, "available": 40 * 2**30},
            "layers": [0, 15],
        },
        {
            "id": "n2",
            "name": "laptop",
            "engine": "tinygrad",
            "memory": {"total": 16 * 2**30, "available": 9 * 2**30},
            "layers": [16, 23],
        },
        {
            "id": "n3",
            "name": "desktop",
            "live": False,
            "engine": "tinygrad",
            "memory": {"total": 32 * 2**30},
            "layers": [24, 29],
        },
    ],
    "downloads": [
        {
            "model": "smollm2-135m-instruct",
            "node": "laptop",
            "done": 30 * 2**20,
            "total": 90 * 2**20,
        }
    ],
}


# /api/ps as Ollama's clients read it; a node holding several models may name
# each one's nodes and layers (the first model leaves that to /v1/topology).
RUNNING = {
    "models": [
        {"name": "smollm2:135m", "model": "smollm2:135m", "size": 101 * 10**6,
         "expires_at": "2318-01-01T00:00:00Z"},
        {"name": "qwen2.5:7b", "model": "qwen2.5:7b", "size": 4_683_073_536,
         "expires_at": "2026-12-07T12:34:00Z",
         "nodes": [{"id": "n1", "name": "studio", "layers": [0, 27]}]},
    ]
}  # fmt: skip


def test_cluster_view_renders_a_ring_and_download_progress(
    browser: Browser, api_node: RunningNode
) -> None:
    """The cluster panel's rendering of a multi-node topology (served by the test:
    one machine cannot show a real three-node ring in a browser)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    context.add_init_script(f"localStorage.setItem('exoquic.apiKey', {api_node.api_key!r})")
    page = context.new_page()
    page.route("**/v1/topology", lambda route: route.fulfill(json=RING))
    page.route("**/api/ps", lambda route: route.fulfill(json=RUNNING))
    page.goto(api_node.url)
    nodes = page.locator("#nodes li")
    expect(nodes).to_have_count(3)
    expect(page.locator("#plan-version")).to_have_text("plan v4")
    expect(nodes.nth(1)).to_contain_text("laptop")
    expect(nodes.nth(1)).to_contain_text("Layers 16\u201323 of 30")
    expect(nodes.nth(2).locator(".facts")).to_have_text("Model—Free?Total32.0 GiB")  # no crash
    expect(nodes.nth(2)).to_contain_text("offline")
    expect(page.locator("#cluster-status")).to_have_text("loading")
    download = page.locator("#downloads .download-item")
    expect(download).to_contain_text("30 MiB / 90 MiB (33%)")
    width = download.locator(".fill").evaluate("e => e.style.width")
    assert width.startswith("33.3")
    expect(page.locator("#empty")).to_be_visible()
    # The loaded models: the ring's from the topology, another's from its own `nodes`.
    loaded = page.locator("#loaded-models .loaded-model")
    expect(loaded).to_have_count(2)
    expect(loaded.nth(0)).to_contain_text("smollm2:135m")
    ranges = ["studio: layers 0\u201315", "laptop: layers 16\u201323", "desktop: layers 24\u201329"]
    expect(loaded.nth(0).locator(".layer-ranges li")).to_have_text(ranges)
    expect(loaded.nth(1)).to_contain_text(re.compile(r"qwen2\.5:7b · 4\.\d GiB · until \d\d:\d\d"))
    expect(loaded.nth(1).locator(".layer-ranges li")).to_have_text(["studio: layers 0\u201327"])
    screenshot(page, "ui-cluster-dark.png")
    context.close()


# --- the model picker and pulls


def catalog(node: RunningNode) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{node.url}/v1/exoquic/models", headers=node.headers(), timeout=30)
    response.raise_for_status()
    return {row["id"]: row for row in response.json()["data"]}


def test_picker_lists_the_models_with_their_sizes_and_fit(
    page: Page, api_node: RunningNode
) -> None:
    rows = catalog(api_node)
    assert set(rows) >= {e.id for e in list_models()}
    picker = page.locator("#model")
    expect(picker).to_have_value(DEFAULT_MODEL_ID)
    expect(page.locator('#model option[data-group="loaded"]')).to_have_text(
        [re.compile(r"^smollm2:135m · \d+ MiB · fits$")]
    )
    expect(page.locator("#model option")).to_have_count(len(rows))
    expect(page.locator("#model-status")).to_have_text("loaded · fits")
    expect(page.locator("#pull")).to_be_hidden()
    for row in rows.values():  # each option shows the node's size and fit for it
        option = page.locator(f'#model option[value="{row["id"]}"]')
        label = option.text_content() or ""
        assert label.startswith(f"{row['name']} · ") and re.search(r" \d+(\.\d)? [MG]iB", label)
        assert label.endswith({True: " · fits", False: " · too big", None: "iB"}[row["fits"]])
        assert option.get_attribute("title") == row["fit"]
    screenshot(page, "ui-picker.png")
    # On a small cluster (the rows the node would give with 2 GB to offer) the
    # big models say so, and how much they miss by.
    small = ClusterMemory([2 * 10**9], 0.8, 4096)
    rows_here = catalog_rows(list_models(), [], set(), {DEFAULT_MODEL_ID}, small)
    page.route("**/v1/exoquic/models", lambda route: route.fulfill(json={"data": rows_here}))
    page.reload()
    too_big = next(row for row in rows_here if row["fits"] is False)
    option = page.locator(f'#model option[value="{too_big["id"]}"]')
    expect(option).to_have_text(re.compile(r" · too big$"))
    page.locator("#model").select_option(too_big["id"])
    status = page.locator("#model-status")
    expect(status).to_have_text("not downloaded · too big")
    expect(status).to_have_attribute("title", re.compile(r"does not fit: needs [\d.]+ GB more"))
    expect(page.locator("#pull")).to_be_visible()
    screenshot(page, "ui-picker-too-big.png")


def test_pull_shows_progress_then_the_chat_uses_the_pulled_model(
    page: Page, api_node: RunningNode, session_hub: HubServer
) -> None:
    session_hub.rate = PULLABLE_BYTES / 3  # three seconds of progress to watch
    try:
        page.locator("#model").select_option(PULLABLE.id)
        expect(page.locator("#model-status")).to_contain_text("not downloaded")
        page.click("#pull")
        item = page.locator("#pulls .pull-item")
        expect(page.locator("#pull")).to_be_hidden()
        progress = r"Pulling smollm2:360m: \d+ [KM]iB / 8 MiB \(\d+%\) · \d+ [KM]iB/s · ETA \d+ s"
        expect(item).to_contain_text(re.compile(progress))
        screenshot(page, "ui-pulling.png")
        expect(item).to_have_text("Pulled smollm2:360m", timeout=60_000)
    finally:
        session_hub.rate = None
    assert catalog(api_node)[PULLABLE.id]["cached"] is True
    option = page.locator(f'#model option[value="{PULLABLE.id}"]')
    expect(option).to_have_attribute("data-group", "cached")
    expect(page.locator("#model")).to_have_value(PULLABLE.id)  # still the chosen one
    expect(page.locator("#model-status")).to_contain_text("downloaded")
    expect(page.locator("#pull")).to_be_hidden()
    # The chat asks for the chosen model (its reply is the test's: this node serves
    # the bundled model, and the pulled file is random bytes).
    chat = StubChat("from the other model")
    page.route("**/v1/chat/completions", chat)
    send(page, "Hello")
    expect(page.locator(".message.assistant .content")).to_have_text(["from the other model"])
    assert [r["model"] for r in chat.requests] == [PULLABLE.id]


# --- rendering of replies, message actions, small screens (the model's reply
# is served by the test so each markdown case is exact; the page, its scripts
# and its CSP come from the real node).

MARKDOWN_REPLY = """## Plan

1. First step
   - nested *point* with `inline code`
2. Second step

| Layer | Node |
|---|---|
| 0 | studio |

```python
def greet(name):
    return f"hi {name}"
```

See [the docs](https://example.com/docs) or [this](javascript:window.pwned=3).

<b>raw bold</b> <script>window.pwned = 1</script>
<img src="x" onerror="window.pwned = 2">
"""


def sse(text: str) -> str:
    """A chat completion stream of `text` in a few chunks, as the node sends it."""
    pieces = [text[i : i + 40] for i in range(0, len(text), 40)]
    events = [
        {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        for piece in pieces
    ]
    events.append({"choices": [], "usage": {"completion_tokens": len(pieces)}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


class StubChat:
    """Answers /v1/chat/completions with `replies` in turn, recording each request."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, route: Route) -> None:
        self.requests.append(json.loads(route.request.post_data or "{}"))
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        route.fulfill(status=200, content_type="text/event-stream", body=sse(reply))


def stubbed_page(
    browser: Browser, node: RunningNode, chat: StubChat, **context_args: Any
) -> tuple[BrowserContext, Page, list[str]]:
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 800}, **context_args})
    context.add_init_script(f"localStorage.setItem('exoquic.apiKey', {node.api_key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/v1/chat/completions", chat)
    page.goto(node.url)
    expect(page.locator("#model")).to_have_value(DEFAULT_MODEL_ID)
    return context, page, errors


def test_markdown_replies_render_and_model_html_stays_inert(
    browser: Browser, api_node: RunningNode
) -> None:
    chat = StubChat(MARKDOWN_REPLY)
    context, page, errors = stubbed_page(browser, api_node, chat)
    send(page, "Plan it")
    reply = page.locator(".message.assistant .content").last
    expect(reply.locator("h2")).to_have_text("Plan")
    expect(reply.locator("ol > li > ul > li")).to_contain_text("nested point with inline code")
    expect(reply.locator("ol > li > ul > li em")).to_have_text("point")
    expect(reply.locator("li code")).to_have_text("inline code")
    expect(reply.locator("table th")).to_have_text(["Layer", "Node"])
    expect(reply.locator("table td")).to_have_text(["0", "studio"])
    block = reply.locator(".code-block")
    expect(block.locator(".code-language")).to_have_text("python")
    expect(block.locator("code")).to_have_text('def greet(name):\n    return f"hi {name}"\n')
    expect(block.locator("code .hljs-keyword").first).to_have_text("def")
    expect(block.locator("button.copy")).to_be_visible()
    link = reply.locator("a", has_text="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(reply.locator("a", has_text="this")).not_to_have_attribute("href", re.compile(".*"))
    # Raw HTML from the model is shown as text, never run or rendered.
    expect(reply).to_contain_text("<b>raw bold</b> <script>window.pwned = 1</script>")
    expect(reply).to_contain_text('<img src="x" onerror="window.pwned = 2">')
    assert reply.locator("script, img, b").count() == 0
    assert page.evaluate("window.pwned") is None
    # The first request uses the UI's defaults: greedy, a finite reply length.
    assert chat.requests[0]["temperature"] == 0
    assert chat.requests[0]["max_tokens"] == 1024
    screenshot(page, "ui-markdown.png")
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(300)  # the buttons' colour transition
    screenshot(page, "ui-markdown-dark.png")
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def test_copy_buttons_copy_the_code_and_the_reply(browser: Browser, api_node: RunningNode) -> None:
    chat = StubChat(MARKDOWN_REPLY)
    context, page, errors = stubbed_page(browser, api_node, chat)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    send(page, "Plan it")
    reply = page.locator(".message.assistant").last
    reply.locator(".code-block button.copy").click()
    expect(reply.locator(".code-block button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == (
        'def greet(name):\n    return f"hi {name}"\n'
    )
    reply.locator(".meta button.copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN_REPLY
    context.close()
    assert errors == []


def test_regenerate_and_edit_resend(browser: Browser, api_node: RunningNode) -> None:
    chat = StubChat("first answer", "second answer", "answer to the edit")
    context, page, errors = stubbed_page(browser, api_node, chat)
    send(page, "Question one")
    replies = page.locator(".message.assistant .content")
    expect(replies).to_have_text(["first answer"])

    page.locator(".message.assistant button.regenerate").click()
    expect(replies).to_have_text(["second answer"])  # replaced, not added
    assert chat.requests[1]["messages"] == chat.requests[0]["messages"]

    page.locator(".message.user button.edit").click()
    page.fill(".edit-box", "Question two")
    page.click("button.save-edit")
    expect(page.locator(".message.user .content")).to_have_text(["Question two"])
    expect(replies).to_have_text(["answer to the edit"])
    assert chat.requests[2]["messages"] == [{"role": "user", "content": "Question two"}]
    expect(page.locator("#conversations .chat-link")).to_have_text(["Question two"])
    context.close()
    assert errors == []


def test_delete_conversation_can_be_undone_and_is_kept_after_reload(
    browser: Browser, api_node: RunningNode
) -> None:
    chat = StubChat("ok")
    context, page, errors = stubbed_page(browser, api_node, chat)
    send(page, "Keep me")
    expect(page.locator(".message.assistant .content")).to_have_text(["ok"])
    page.click("#new-chat")
    send(page, "Delete me")
    expect(page.locator(".message.assistant .content")).to_have_text(["ok"])
    page.locator("#conversations li", has_text="Keep me").hover()  # shows its delete button
    page.get_by_role("button", name="Delete conversation: Keep me").click()
    expect(page.locator("#conversations .chat-link")).to_have_text(["Delete me"])
    page.click("#banner button.undo")  # a slip is undone, in its place
    expect(page.locator("#conversations .chat-link")).to_have_text(["Delete me", "Keep me"])
    expect(page.locator("#banner")).to_be_hidden()
    page.get_by_role("button", name="Delete conversation: Delete me").click()
    expect(page.locator("#conversations .chat-link")).to_have_text(["Keep me"])
    expect(page.locator("#banner")).to_contain_text("Deleted “Delete me”.")
    page.reload()
    expect(page.locator("#conversations .chat-link")).to_have_text(["Keep me"])
    expect(page.locator(".message.user .content")).to_have_text(["Keep me"])
    context.close()
    assert errors == []


PHONE = {"width": 390, "height": 844}


def inside_viewport(page: Page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    assert box is not None
    width = page.viewport_size["width"] if page.viewport_size else 0
    return box["x"] >= 0 and box["x"] + box["width"] <= width


def test_phone_has_a_conversation_drawer_and_an_uncut_model_name(
    browser: Browser, api_node: RunningNode
) -> None:
    chat = StubChat("ok")
    context, page, errors = stubbed_page(browser, api_node, chat, viewport=PHONE)
    send(page, "First chat")
    expect(page.locator(".message.assistant .content")).to_have_text(["ok"])
    page.click("#new-chat-compact")
    assert not inside_viewport(page, "#sidebar")
    page.click("#toggle-sidebar")
    expect(page.locator("#toggle-sidebar")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#sidebar")).to_have_css("transform", "none")  # slid in
    assert inside_viewport(page, "#sidebar")
    screenshot(page, "ui-phone-drawer.png")
    page.locator("#conversations .chat-link", has_text="First chat").click()
    expect(page.locator(".message.user .content")).to_have_text(["First chat"])
    expect(page.locator("#toggle-sidebar")).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#sidebar")).not_to_have_css("transform", "none")  # slid out
    page.wait_for_timeout(300)  # the slide's transition, for the screenshot
    # The picker is wide enough for the model's whole id, and nothing scrolls sideways.
    fits = page.evaluate(
        """() => {
        const select = document.getElementById('model');
        const style = getComputedStyle(select);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
        const text = ctx.measureText(select.selectedOptions[0].text).width;
        const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
        return select.clientWidth - padding - 16 >= text;  // 16 px: the arrow
        }"""
    )
    assert fits, "the model picker cuts the model's name"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "ui-phone-chat.png")
    context.close()
    assert errors == []


LONG_NAME = "laptop-of-the-research-group-on-the-third-floor.local"


def ring_of(count: int) -> dict[str, Any]:
    """A stubbed topology of `count` nodes with long names and chips, serving."""
    spans = {2: [(0, 17), (18, 29)], 3: [(0, 13), (14, 23), (24, 29)]}[count]
    names = ["studio", LONG_NAME, "desktop-with-a-rather-long-hostname-too"]
    chips = ["Apple M2 Ultra (76-core GPU)", "NVIDIA GeForce RTX 4090 Laptop GPU", "AMD Ryzen 9"]
    nodes = [
        {
            "id": f"exq-node-{i}",
            "name": names[i],
            "self": i == 0,
            "live": True,
            "engine": ["mlx", "tinygrad", "tinygrad"][i],
            "chip": chips[i],
            "memory": {"total": 24 * 2**30, "available": 15 * 2**30, "model": 140 * 2**20},
            "layers": list(span),
        }
        for i, span in enumerate(spans)
    ]
    return {**RING, "status": "serving", "nodes": nodes, "downloads": []}


# Any part of a card drawn outside the card (the "lapt..." / spilled-engine bug).
OVERFLOWING = """() => {
    const bad = [];
    for (const card of document.querySelectorAll('#nodes > li')) {
        const outer = card.getBoundingClientRect();
        for (const part of card.querySelectorAll('*')) {
            const r = part.getBoundingClientRect();
            if (r.width === 0) continue;
            if (r.left < outer.left - 0.5 || r.right > outer.right + 0.5)
                bad.push(`${part.className || part.tagName}: ${part.textContent.slice(0, 30)}`);
        }
        const panel = document.getElementById('panel').getBoundingClientRect();
        if (outer.right > panel.right + 0.5) bad.push('card past the panel');
    }
    return bad;
}"""

# Names that fit are shown whole; only a name longer than the card is ellipsized.
CUT_SHORT_NAMES = """() => [...document.querySelectorAll('#nodes .node-name')]
    .filter((n) => n.textContent.length < 20 && n.scrollWidth > n.clientWidth)
    .map((n) => n.textContent)"""


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 800}, PHONE], ids=["laptop", "phone"]
)
def test_ring_picture_and_node_cards_fit_long_names(
    browser: Browser, api_node: RunningNode, count: int, viewport: dict[str, int]
) -> None:
    context = browser.new_context(viewport=viewport)
    context.add_init_script(f"localStorage.setItem('exoquic.apiKey', {api_node.api_key!r})")
    page = context.new_page()
    topology = ring_of(count)
    page.route("**/v1/topology", lambda route: route.fulfill(json=topology))
    page.goto(api_node.url)
    if page.locator("#toggle-panel").is_visible():
        page.click("#toggle-panel")  # below 1100 px the panel is a drawer
    arcs = page.locator("#ring .ring-node")
    expect(arcs).to_have_count(count)
    expect(page.locator("#ring .ring-centre")).to_have_text("30 layers")
    expect(page.locator("#ring svg")).to_have_class(re.compile("serving"))
    expect(page.locator("#token-path")).to_contain_text(f"1 studio → 2 {LONG_NAME}")
    # Arc lengths follow the layer counts.
    lengths = arcs.locator(".ring-arc").evaluate_all("ps => ps.map((p) => p.getTotalLength())")
    layers = [n["layers"][1] - n["layers"][0] + 1 for n in topology["nodes"]]
    ratios = [length / n for length, n in zip(lengths, layers, strict=True)]
    assert max(ratios) / min(ratios) < 1.3, (lengths, layers)
    cards = page.locator("#nodes > li")
    expect(cards).to_have_count(count)
    expect(cards.first.locator(".tag")).to_have_text("this node")
    expect(cards.nth(1).locator(".engine")).to_have_text(
        "tinygrad · NVIDIA GeForce RTX 4090 Laptop GPU"
    )
    expect(cards.nth(1).locator(".facts")).to_have_text("Model140 MiBFree15.0 GiBTotal24.0 GiB")
    expect(cards.nth(1).locator(".node-name")).to_have_attribute("title", LONG_NAME)
    assert page.evaluate(OVERFLOWING) == []
    assert page.evaluate(CUT_SHORT_NAMES) == []
    name = "laptop" if viewport["width"] > 400 else "phone"
    SCREENSHOTS.mkdir(exist_ok=True)
    page.locator("#panel").screenshot(path=str(SCREENSHOTS / f"ui-ring-{count}-{name}.png"))
    context.close()


def test_sampling_starts_from_the_models_defaults_until_changed(
    browser: Browser, api_node: RunningNode
) -> None:
    """The node's `defaults` in /v1/models (changed here, so the test tells them
    from the UI's own fallbacks) drive requests until the user picks values;
    a temperature the old UI stored by itself is not taken for a choice."""

    def models_with_defaults(route: Route) -> None:
        body = route.fetch().json()
        body["data"][0]["defaults"] = {"temperature": 0.6, "top_p": 0.9, "max_tokens": 300}
        route.fulfill(json=body)

    chat = StubChat("one", "two", "three")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(
        f"localStorage.setItem('exoquic.apiKey', {api_node.api_key!r});"
        "localStorage.setItem('exoquic.settings', "
        """'{"temperature": 0.7, "maxTokens": "", "system": "Be brief."}')"""
    )
    page = context.new_page()
    page.route("**/v1/models", models_with_defaults)
    page.route("**/v1/chat/completions", chat)
    page.goto(api_node.url)
    expect(page.locator("#temperature-value")).to_have_text("0.60 (default)")
    expect(page.locator("#max-tokens")).to_have_attribute("placeholder", "300 (default)")
    expect(page.locator("#system")).to_have_value("Be brief.")  # kept from the old settings
    send(page, "Hi")
    expect(page.locator(".message.assistant .content")).to_have_text(["one"])
    assert (chat.requests[0]["temperature"], chat.requests[0]["max_tokens"]) == (0.6, 300)
    assert chat.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}

    page.fill("#temperature", "1.2")
    page.fill("#max-tokens", "50")
    expect(page.locator("#temperature-value")).to_have_text("1.20")
    page.locator(".message.assistant button.regenerate").click()
    expect(page.locator(".message.assistant .content")).to_have_text(["two"])
    assert (chat.requests[1]["temperature"], chat.requests[1]["max_tokens"]) == (1.2, 50)

    page.click("#reset-settings")
    expect(page.locator("#temperature-value")).to_have_text("0.60 (default)")
    expect(page.locator("#max-tokens")).to_have_value("")
    page.reload()
    expect(page.locator("#temperature-value")).to_have_text("0.60 (default)")
    page.locator(".message.assistant button.regenerate").click()
    expect(page.locator(".message.assistant .content")).to_have_text(["three"])
    assert (chat.requests[2]["temperature"], chat.requests[2]["max_tokens"]) == (0.6, 300)
    context.close()


def test_keyboard_shortcuts_are_listed_and_work(browser: Browser, api_node: RunningNode) -> None:
    chat = StubChat("ok")
    context, page, errors = stubbed_page(browser, api_node, chat)
    expect(page.locator("#shortcuts")).to_contain_text("new chat")
    send(page, "First")
    expect(page.locator(".message.assistant .content")).to_have_text(["ok"])
    page.locator("#new-chat").focus()
    page.keyboard.press("/")
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.press("Control+Shift+O")
    expect(page.locator("#conversations li")).to_have_count(2)
    expect(page.locator("#messages li")).to_have_count(0)
    context.close()
    assert errors == []
