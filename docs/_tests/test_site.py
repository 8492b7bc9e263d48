"""The built site, as a reader's browser shows it (./scripts/docs --check; CI runs it).

Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, through a
client of a few lines on ``websockets``: the tutorial and a guide render, a diagram is
drawn, the site's own search finds ``on_commit``, and no page asks for anything outside
the site (no CDN, no remote font or script). The tutorial's first screen is written to
docs/_build/screenshots/tutorial.png.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

SITE = Path(__file__).resolve().parent.parent / "_build" / "html"
SCREENSHOTS = SITE.parent / "screenshots"


class Page:
    """One Chromium tab, driven over the DevTools protocol."""

    def __init__(self, socket: Any, session: str, loop: asyncio.AbstractEventLoop) -> None:
        self.socket, self.session, self.loop = socket, session, loop
        self.ids = itertools.count(1)
        self.requested: list[str] = []
        self.loaded = asyncio.Event()
        self.replies: dict[int, asyncio.Future[Any]] = {}
        self.reader = loop.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            if "id" in message and message["id"] in self.replies:
                self.replies.pop(message["id"]).set_result(message)
            elif message.get("method") == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
            elif message.get("method") == "Page.loadEventFired":
                self.loaded.set()

    async def send(self, method: str, **params: Any) -> Any:
        ident = next(self.ids)
        reply = self.replies[ident] = self.loop.create_future()
        await self.socket.send(
            json.dumps({"id": ident, "method": method, "params": params, "sessionId": self.session})
        )
        message = await asyncio.wait_for(reply, 30)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message.get("result", {})

    async def goto(self, url: str) -> None:
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 30)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.1)


class Browser:
    """Headless Chromium with one page, and the site served on a loopback port."""

    def __init__(self) -> None:
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            pytest.fail("Chromium is not installed: apt-get install chromium")
        if not (SITE / "index.html").exists():
            pytest.fail(f"no site in {SITE}: build it first with ./scripts/docs")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
        handler.log_message = lambda *args: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.profile = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile.name}",
                "--window-size=1280,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.loop = asyncio.new_event_loop()
        self.page = self.loop.run_until_complete(self.open())

    async def open(self) -> Page:
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        socket = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        page = Page(socket, "", self.loop)
        target = await page.send("Target.createTarget", url="about:blank")
        attached = await page.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page.session = attached["sessionId"]
        await page.send("Page.enable")
        await page.send("Network.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=800,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.page.socket.close())
        self.run(asyncio.wait_for(self.page.reader, 10))
        self.process.terminate()
        self.process.wait(10)
        self.server.shutdown()
        self.server.server_close()
        self.profile.cleanup()
        self.loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    browser = Browser()
    yield browser
    browser.close()


def test_tutorial_renders_and_its_first_screen_is_saved(browser: Browser) -> None:
    """The tutorial's title and first code block are on screen; a screenshot is written."""
    page = browser.page
    browser.run(page.goto(f"{browser.base}/tutorial.html"))
    title = browser.run(page.evaluate("document.querySelector('h1').textContent"))
    assert "Tutorial" in title
    blocks = browser.run(page.evaluate("document.querySelectorAll('div.highlight pre').length"))
    assert blocks > 3
    shot = browser.run(page.send("Page.captureScreenshot", format="png"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "tutorial.png").write_bytes(base64.b64decode(shot["data"]))
    assert (SCREENSHOTS / "tutorial.png").stat().st_size > 10_000


def test_a_guide_renders_with_the_navigation(browser: Browser) -> None:
    """A guide shows its title, and the sidebar lists the other guides."""
    page = browser.page
    browser.run(page.goto(f"{browser.base}/guides/replicas.html"))
    assert "Replicas" in browser.run(page.evaluate("document.querySelector('h1').textContent"))
    links = browser.run(
        page.evaluate("[...document.querySelectorAll('.sidebar-tree a')].map(a => a.textContent)")
    )
    assert any("Read-only" in link for link in links), links


def test_a_diagram_is_drawn(browser: Browser) -> None:
    """The unit-of-work page's Graphviz diagrams load as SVG images of nonzero size."""
    page = browser.page
    browser.run(page.goto(f"{browser.base}/unit-of-work.html"))
    sizes = browser.run(
        page.wait_for(
            """(() => {
                const selector = 'object[data$=".svg"], img[src$=".svg"]';
                const drawn = [...document.querySelectorAll(selector)]
                    .map(element => {
                        const svg = element.contentDocument?.querySelector('svg');
                        const loaded = svg ? svg.getBBox().width > 0 : element.naturalWidth > 0;
                        const box = element.getBoundingClientRect();
                        const big = box.width > 50 && box.height > 30;
                        return loaded && big ? [box.width, box.height] : null;
                    })
                    .filter(size => size);
                return drawn.length ? drawn : null;
            })()"""
        )
    )
    assert sizes, "no SVG diagram drawn on unit-of-work.html"


def test_search_finds_on_commit(browser: Browser) -> None:
    """The site's own search (its index, loaded in the browser) finds on_commit."""
    page = browser.page
    browser.run(page.goto(f"{browser.base}/search.html?q=on_commit"))
    results = browser.run(
        page.wait_for(
            "[...document.querySelectorAll('#search-results li a')].map(a => a.textContent)"
        )
    )
    assert results, "the search for on_commit found nothing"


def test_nothing_is_fetched_from_outside_the_site(browser: Browser) -> None:
    """Every request the pages made stayed on the site: it works offline."""
    outside = [
        url
        for url in browser.page.requested
        if not url.startswith((browser.base, "data:", "about:", "blob:"))
    ]
    assert browser.page.requested and not outside, outside
