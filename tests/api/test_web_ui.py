"""The chat UI in a real headless Chromium against a real node.

Uses Debian's /usr/bin/chromium through Playwright (its own browser download
does not work here). Screenshots go to test-output/ for a human to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import REPO, RunningNode
from playwright.sync_api import Browser, Page, expect, sync_playwright

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
    expect(page.locator("#model option")).to_have_count(1)
    nodes = page.locator("#nodes li")
    expect(nodes).to_have_count(1)
    expect(nodes.first).to_contain_text("this node")
    expect(nodes.first).to_contain_text("Layers 0\u201329 of 30")
    expect(page.locator("#cluster-status")).to_have_text("serving")
    page.fill("#temperature", "0")
    expect(page.locator("#temperature-value")).to_have_text("0.00")

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
    expect(page.locator("#model option")).to_have_count(1)
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


def test_cluster_view_renders_a_ring_and_download_progress(
    browser: Browser, api_node: RunningNode
) -> None:
    """The cluster panel's rendering of a multi-node topology (served by the test:
    one machine cannot show a real three-node ring in a browser)."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    context.add_init_script(f"localStorage.setItem('exoquic.apiKey', {api_node.api_key!r})")
    page = context.new_page()
    page.route("**/v1/topology", lambda route: route.fulfill(json=RING))
    page.goto(api_node.url)
    nodes = page.locator("#nodes li")
    expect(nodes).to_have_count(3)
    expect(page.locator("#plan-version")).to_have_text("plan v4")
    expect(nodes.nth(1)).to_contain_text("laptop")
    expect(nodes.nth(1)).to_contain_text("Layers 16\u201323 of 30")
    expect(nodes.nth(2)).to_contain_text("Memory ? / 32.0 GiB")  # no 'available': no crash
    expect(nodes.nth(2)).to_contain_text("offline")
    expect(page.locator("#cluster-status")).to_have_text("loading")
    download = page.locator("#downloads .download-item")
    expect(download).to_contain_text("30 MiB / 90 MiB (33%)")
    width = download.locator(".fill").evaluate("e => e.style.width")
    assert width.startswith("33.3")
    expect(page.locator("#empty")).to_be_visible()
    screenshot(page, "ui-cluster-dark.png")
    context.close()
