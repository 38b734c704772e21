"""
The web UI at C{/ui/} in a real headless Chromium against a real daemon
serving the demo config: live model states, streamed chat, activity and
captures, logs, performance without a GPU and growing from the event stream,
the runtime fields of the Models page (failure, progress, TTL countdown,
last used, memory), the API-key prompt, the phone
width, no console errors; screenshots of every page (desktop and phone,
light and dark) go to the artifacts folder (L{artifactsDir}).
"""

from __future__ import annotations

import atexit
import base64
import re
import unittest
from pathlib import Path

from tests.browser.support import Browser, Daemon, artifactsDir, demoConfig, skipReason

SKIP = skipReason()
PAGES = ["Playground", "Models", "Activity", "Logs", "Performance", "Config"]
ROUTES = {"Playground": "", "Models": "models", "Activity": "activity", "Logs": "logs",
          "Performance": "performance", "Config": "config"}


_shared: dict = {}

#: A tenth of a second of silence, as WAV.
WAV = (b"RIFF" + (36 + 1600).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
       + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
       + (16000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
       + b"data" + (1600).to_bytes(4, "little") + bytes(1600))

#: A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def shared(name: str, extra: str):
    """
    @return: C{(daemon, browser)} shared by the tests of one class, made
        on first use and stopped when the test process exits (trial runs
        no C{setUpClass}).
    """
    if name not in _shared:
        daemon = Daemon(demoConfig(extra))
        try:
            browser = _shared["browser"] if "browser" in _shared else Browser()
        except Exception:
            daemon.stop()
            raise
        if "browser" not in _shared:
            _shared["browser"] = browser
            atexit.register(browser.close)
        atexit.register(daemon.stop)
        _shared[name] = daemon
    return _shared[name], _shared["browser"]


def _expect():
    from playwright.sync_api import expect

    return expect


@unittest.skipIf(SKIP, SKIP or "")
class UITests(unittest.TestCase):
    """
    One daemon and one browser for the whole class (start-up dominates).
    """

    def setUp(self):
        self.daemon, self.browser = shared("ui", "")
        self.shots = artifactsDir()
        self.browser.errors.clear()
        self.expectedStatuses: set[int] = set()

    def tearDown(self):
        # Chromium itself logs each failed request; a test that provokes one says so.
        logged = [e for e in self.browser.errors if not any(
            f"responded with a status of {code} " in e for code in self.expectedStatuses)]
        self.assertEqual(logged, [], "errors in the browser console")

    def open(self, route="", width=1280, height=800, scheme="light"):
        page = self.browser.page(width, height, scheme)
        self.addCleanup(page.context.close)
        page.goto(self.daemon.base + "/ui/#/" + route)
        _expect()(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        return page

    def shot(self, page, name):
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=False)

    def test_loadAModelAndWatchItsStateChangeLive(self):
        expect = _expect()
        page = self.open("models")
        row = page.get_by_role("row").filter(has_text="demo-medium")
        expect(row.get_by_text("stopped", exact=True)).to_be_visible()
        page.get_by_role("button", name="Load demo-medium").click()
        expect(row.get_by_text("ready", exact=True)).to_be_visible(timeout=20000)
        expect(page.get_by_role("button", name="Unload demo-medium")).to_be_enabled()
        self.shot(page, "models-ready-desktop-light")
        # Another client swaps models: the page follows without a reload.
        status, _ = self.daemon.request("POST", "/api/models/load/demo-large")
        self.assertEqual(status, 200)
        expect(page.get_by_role("row").filter(has_text="demo-large").get_by_text(
            "ready", exact=True)).to_be_visible(timeout=20000)
        page.get_by_role("button", name="Unload all").click()
        expect(page.get_by_role("button", name="Load demo-large")).to_be_visible(timeout=20000)
        # A slow model shows its load time while it starts.
        page.get_by_role("button", name="Load demo-large").click()
        expect(page.get_by_role("progressbar", name="Loading demo-large")).to_be_visible()
        self.shot(page, "models-starting-desktop-light")
        expect(page.get_by_role("button", name="Unload demo-large")).to_be_enabled(timeout=20000)
        link = row.get_by_role("link", name="demo-medium")
        self.assertEqual(link.get_attribute("href"), "/upstream/demo-medium/")

    def test_aChatAnswerGrowsWhileItStreams(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-large")
        page.get_by_role("textbox", name="Message", exact=True).fill("Tell me about llamas")
        page.get_by_role("button", name="Send").click()
        answer = page.get_by_role("article", name="Answer").last
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        expect(answer.locator(".md")).not_to_be_empty(timeout=20000)
        first = len(answer.locator(".md").inner_text())
        self.shot(page, "playground-streaming-desktop-light")
        expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=30000)
        final = answer.locator(".md").inner_text()
        self.assertGreater(len(final), first, "the answer did not grow while streaming")
        expect(answer.get_by_text(re.compile(r"\d+ out"))).to_be_visible()
        self.shot(page, "playground-done-desktop-light")
        # The conversation survives a reload.
        page.reload()
        expect(page.get_by_text("Tell me about llamas")).to_be_visible()
        expect(page.get_by_role("article", name="Answer").last.locator(".md")).to_have_text(final)

    def test_aCurlChatAppearsInActivityAndItsCaptureOpens(self):
        expect = _expect()
        page = self.open("activity")
        status, _ = self.daemon.request("POST", "/v1/chat/completions", {
            "model": "demo-small", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(status, 200)
        table = page.get_by_role("table")
        row = table.get_by_role("row").filter(has_text="/v1/chat/completions").first
        expect(row).to_be_visible()
        expect(row.get_by_text("demo-small")).to_be_visible()
        # Any request through /upstream/ shows up too, not only POSTs.
        status, _ = self.daemon.request("GET", "/upstream/demo-small/v1/models")
        self.assertEqual(status, 200)
        upstream = table.get_by_role("row").filter(has_text="/upstream/demo-small/v1/models")
        expect(upstream.first).to_be_visible()
        expect(upstream.first.get_by_text("200")).to_be_visible()
        self.shot(page, "activity-desktop-light")
        page.get_by_label("Status").select_option("error")
        expect(table.get_by_text("No request matches the filters.")).to_be_visible()
        page.get_by_label("Status").select_option("")
        page.get_by_role("combobox", name="Model").select_option("demo-small")
        for cell in table.locator("td[data-label=Model]").all():
            self.assertEqual(cell.inner_text(), "demo-small")
        row.get_by_role("button", name=re.compile(r"View capture")).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_text("Request body")).to_be_visible()
        expect(dialog.get_by_role("button", name="Copy as curl")).to_be_visible()
        expect(dialog.locator("pre").filter(has_text='"model": "demo-small"')).to_be_visible()
        self.shot(page, "capture-dialog-desktop-light")
        expect(dialog.get_by_role("heading", name="Text")).to_be_visible()   # SSE reassembled
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        curl = page.evaluate("""async (id) => {
            const m = await import("/ui/js/pages/capture.js");
            const r = await fetch("/api/captures/" + id, {headers: {"X-LlamaSwap-UI": "1"}});
            return m.curlOf(await r.json(), "http://llamaswap"); }""", int(row.locator("td").first.inner_text()))
        self.assertTrue(curl.startswith("curl 'http://llamaswap/v1/chat/completions'"), curl)
        self.assertIn("--data-raw '{", curl)
        self.assertIn('"model": "demo-small"', curl)

    def test_aNewLogLineAppearsInLogs(self):
        expect = _expect()
        page = self.open("logs")
        proxy = page.get_by_role("log", name="Proxy lines")
        expect(proxy).to_be_visible()
        self.daemon.request("GET", "/v1/models?marker=browser-log-line")
        expect(proxy.get_by_text(re.compile("browser-log-line"))).to_be_visible()
        page.get_by_label("Search Proxy").fill("/([/")
        expect(page.get_by_text("Invalid regular expression")).to_be_visible()
        page.get_by_label("Search Proxy").fill("")
        self.shot(page, "logs-desktop-light")
        # One model's own output.
        status, _ = self.daemon.request("POST", "/v1/chat/completions", {
            "model": "demo-small", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(status, 200)
        upstream = page.get_by_role("region", name="Upstream")
        upstream.get_by_label("Model").select_option("demo-small")
        lines = page.get_by_role("log", name="Upstream lines")
        expect(lines.get_by_text(re.compile("model=demo-small")).first).to_be_visible()
        expect(lines.get_by_text(re.compile("model=demo-(medium|large)"))).to_have_count(0)

    def test_performanceRendersWithNoGPUAndGrowsFromTheStream(self):
        expect = _expect()
        page = self.browser.page()
        self.addCleanup(page.context.close)
        reads = []
        page.on("request", lambda r: "/api/performance" in r.url and reads.append(r.url))
        page.goto(self.daemon.base + "/ui/#/performance")
        expect(page.get_by_text("No GPU metrics on this machine.")).to_be_visible()
        count = page.locator(".perf-count")
        expect(count).to_have_text(re.compile(r"^\d+ samples? · latest"))
        before = int(count.inner_text().split()[0])
        expect(page.get_by_role("figure", name="CPU utilisation (mean of cores)")).to_be_visible()
        self.shot(page, "performance-desktop-light")
        # The monitor samples every 5 s; the next sample comes through the
        # event stream, not from another read of /api/performance.
        expect(count).to_have_text(re.compile(rf"^{before + 1} samples · latest"), timeout=15000)
        self.assertEqual(len(reads), 1, reads)

    def test_configShowsTheEffectiveConfigAndReloads(self):
        expect = _expect()
        page = self.open("config")
        expect(page.get_by_label("Effective config")).to_contain_text("demo-small")
        page.get_by_role("button", name="Reload config").click()
        expect(page.get_by_text("Config reloaded.")).to_be_visible(timeout=20000)
        self.shot(page, "config-desktop-light")
        good = Path(self.daemon.configPath).read_text()
        self.addCleanup(Path(self.daemon.configPath).write_text, good)
        Path(self.daemon.configPath).write_text(good + "\nhealthCheckTimeout: soon\n")
        self.expectedStatuses.add(400)
        page.get_by_role("button", name="Reload config").click()
        refused = page.get_by_role("alert").filter(has_text="Reload refused (HTTP 400)")
        expect(refused).to_contain_text("healthCheckTimeout")
        self.shot(page, "config-refused-desktop-light")

    def test_theRerankTabOffersOnlyModelsDeclaringRerank(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("tab", name="Rerank").click()
        picker = page.get_by_role("combobox", name="Model", exact=True)
        expect(picker.locator("option")).to_have_count(1)
        expect(picker).to_have_value("demo-small")
        page.get_by_role("button", name="Rerank", exact=True).click()
        results = page.get_by_role("tabpanel", name="Rerank").get_by_role("table")
        expect(results.get_by_role("row")).to_have_count(5, timeout=20000)
        self.shot(page, "playground-rerank-desktop-light")
        page.get_by_role("tab", name="Images").click()
        expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value("demo-large")
        self.shot(page, "playground-images-desktop-light")

    def test_aModelThatFailsToStartSaysSo(self):
        """
        Its C{failure}: the reason, the exit code (once) and the last lines
        it printed.
        """
        expect = _expect()
        page = self.open("models")
        page.get_by_role("button", name="Load demo-broken").click()
        row = page.get_by_role("row").filter(has_text="demo-broken")
        alert = row.get_by_role("alert").filter(has_text="Failed to start")
        expect(alert).to_be_visible(timeout=20000)
        expect(alert).to_contain_text("exited prematurely (exit code 3)")
        self.assertEqual(alert.inner_text().count("exit code 3"), 1, alert.inner_text())
        expect(alert.get_by_label("Last output lines")).to_have_text("cannot open /models/missing.gguf")
        expect(row.get_by_text("failed", exact=True)).to_be_visible()
        self.shot(page, "models-failed-desktop-light")
        self.expectedStatuses.add(502)

    def chatOnce(self, page, endpoint):
        expect = _expect()
        page.get_by_role("button", name="⚙ Settings", exact=True).click()
        page.get_by_label("Endpoint").select_option(endpoint)
        page.get_by_role("button", name="⚙ Settings", exact=True).click()
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-small")
        page.get_by_role("textbox", name="Message", exact=True).fill("hello over " + endpoint)
        page.get_by_role("textbox", name="Message", exact=True).press("Enter")
        answer = page.get_by_role("article", name="Answer").last
        expect(answer.get_by_role("button", name="Regenerate")).to_be_visible(timeout=20000)
        expect(answer.locator(".md")).not_to_be_empty()
        expect(answer.get_by_text(re.compile(r"\d+ out"))).to_be_visible()
        return answer

    def test_chatOverTheAnthropicAndResponsesAPIs(self):
        page = self.open("")
        for endpoint in ("/v1/messages", "/v1/responses"):
            answer = self.chatOnce(page, endpoint)
            _expect()(answer).to_contain_text(endpoint)
        self.shot(page, "playground-endpoints-desktop-light")

    def test_stopKeepsThePartialAnswer(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-large")
        page.get_by_role("textbox", name="Message", exact=True).fill("a long answer please")
        page.get_by_role("button", name="Send").click()
        answer = page.get_by_role("article", name="Answer").last
        expect(answer.locator(".md")).not_to_be_empty(timeout=20000)
        page.get_by_role("button", name="Stop").click()
        expect(answer.get_by_text(re.compile("stopped"))).to_be_visible()
        expect(answer.locator(".md")).not_to_be_empty()
        answer.get_by_role("button", name="Regenerate").click()
        expect(page.get_by_role("button", name="Stop")).to_be_visible()
        page.get_by_role("button", name="Stop").click()

    def test_editingAMessageAsksAgain(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("button", name="New chat").click() if page.get_by_role(
            "button", name="New chat").is_enabled() else None
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-small")
        page.get_by_role("textbox", name="Message", exact=True).fill("first question")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=20000)
        page.get_by_role("button", name="Edit message").click()
        page.get_by_label("Edit message").fill("second question")
        page.get_by_role("button", name="Save and resend").click()
        expect(page.get_by_text("second question")).to_be_visible()
        expect(page.get_by_text("first question")).to_have_count(0)
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=20000)
        expect(page.get_by_role("article", name="Answer")).to_have_count(1)

    def test_aConversationIsSavedByNameAndReopened(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-small")
        page.get_by_role("textbox", name="Message", exact=True).fill("remember this one")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Regenerate")).to_be_visible(timeout=20000)
        page.get_by_role("button", name="Save", exact=True).click()
        page.get_by_label("Conversation name").fill("llama facts")
        page.get_by_role("button", name="Save conversation").click()
        page.get_by_role("button", name="New chat").click()
        expect(page.get_by_text("remember this one")).to_have_count(0)
        page.get_by_label("Saved conversations").select_option("llama facts")
        expect(page.get_by_text("remember this one")).to_be_visible()

    def test_anAttachedImageIsSentWithTheMessage(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("combobox", name="Model", exact=True).select_option("demo-small")
        page.get_by_label("Attach image").set_input_files(
            files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG}])
        expect(page.get_by_role("img", name="Image 1 to send")).to_be_visible()
        page.get_by_role("textbox", name="Message", exact=True).fill("what is in this picture?")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("img", name="Attached image 1").last).to_be_visible()
        expect(page.get_by_role("button", name="Regenerate").last).to_be_visible(timeout=20000)
        expect(page.get_by_role("article", name="Answer").last.get_by_role("alert")).to_have_count(0)
        self.shot(page, "playground-image-message-desktop-light")

    def test_theKeyboardReachesThePages(self):
        expect = _expect()
        page = self.open("")
        page.keyboard.press("Tab")   # the skip link
        page.keyboard.press("Tab")   # the brand
        for name in PAGES[:2]:
            page.keyboard.press("Tab")
            expect(page.get_by_role("link", name=name)).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Models")).to_be_visible()

    def test_markdownIsSanitisedAndCodeHighlighted(self):
        page = self.open("")
        out = page.evaluate("""async () => {
            const u = await import("/ui/js/util.js");
            const div = document.createElement("div");
            div.innerHTML = u.renderMarkdown(
                "**bold** <img src=x onerror=alert(1)> <script>alert(2)</script>\\n\\n```python\\ndef f(): pass\\n```");
            u.highlightIn(div);
            return {html: div.innerHTML, bold: !!div.querySelector("strong"),
                    highlighted: !!div.querySelector("code.hljs .hljs-keyword")};
        }""")
        self.assertTrue(out["bold"], out)
        self.assertTrue(out["highlighted"], out)
        self.assertNotIn("onerror", out["html"])
        self.assertNotIn("<script", out["html"])
        # Parsing the hostile HTML trips the Content-Security-Policy, which
        # blocks the handler: the only console message allowed here.
        self.browser.errors[:] = [e for e in self.browser.errors
                                  if "inline event handler violates" not in e]

    def test_theThemeCanBeChosen(self):
        expect = _expect()
        page = self.open("models")
        page.get_by_role("combobox", name="Theme").select_option("dark")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        page.reload()
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")

    def test_theRootAndUpstreamRedirectIntoTheUI(self):
        expect = _expect()
        page = self.browser.page()
        self.addCleanup(page.context.close)
        page.goto(self.daemon.base + "/upstream")
        expect(page.get_by_role("heading", name="Models")).to_be_visible()
        self.assertTrue(page.url.endswith("/ui/#/models"), page.url)
        page.goto(self.daemon.base + "/")
        expect(page.get_by_role("tab", name="Chat")).to_be_visible()

    def test_theMediaTabs(self):
        expect = _expect()
        page = self.open("")
        page.get_by_role("tab", name="Images").click()
        panel = page.get_by_role("tabpanel", name="Images")
        panel.get_by_label("Prompt").fill("a lighthouse at dawn")
        panel.get_by_role("button", name="Generate").click()
        expect(panel.get_by_role("img", name="Generated image 1").or_(
            panel.get_by_text("not an image this browser can decode"))).to_be_visible(timeout=20000)
        self.shot(page, "playground-images-result-desktop-light")
        page.get_by_role("tab", name="Speech").click()
        panel = page.get_by_role("tabpanel", name="Speech")
        panel.get_by_label("Text").fill("hello from the playground")
        panel.get_by_role("button", name="Speak").click()
        expect(panel.locator("audio")).to_be_visible(timeout=20000)
        self.shot(page, "playground-speech-desktop-light")
        page.get_by_role("tab", name="Transcription").click()
        panel = page.get_by_role("tabpanel", name="Transcription")
        panel.get_by_role("checkbox").uncheck()   # no model declares transcription
        panel.get_by_role("combobox", name="Model", exact=True).select_option("demo-small")
        panel.get_by_label(re.compile("Audio file")).set_input_files(
            files=[{"name": "hello.wav", "mimeType": "audio/wav", "buffer": WAV}])
        panel.get_by_role("button", name="Transcribe").click()
        expect(panel.locator("pre")).not_to_be_empty(timeout=20000)
        self.shot(page, "playground-transcription-desktop-light")

    def test_anUnknownRouteSaysNotFound(self):
        expect = _expect()
        page = self.open("no-such-page")
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()

    def test_everyPageAtBothWidthsAndThemes(self):
        expect = _expect()
        for width, height, label in ((1280, 800, "desktop"), (390, 844, "phone")):
            for scheme in ("light", "dark"):
                page = self.open("", width, height, scheme)
                for name in PAGES:
                    link = page.get_by_role("navigation").get_by_role("link", name=name)
                    expect(link).to_be_visible()
                    box = link.bounding_box()
                    self.assertLessEqual(box["x"] + box["width"], width, f"{name} is cut off at {width}px")
                    link.click()
                    expect(link).to_have_attribute("aria-current", "page")
                    page.wait_for_timeout(150)
                    self.shot(page, f"{ROUTES[name] or 'playground'}-{label}-{scheme}")
                page.context.close()


MEMORY = "memory:\n  budget: 6GiB\n  models:\n    demo-small: 1GiB\n    demo-large: 4GiB\n"


@unittest.skipIf(SKIP, SKIP or "")
class RuntimeFieldsTests(unittest.TestCase):
    """
    The lifecycle's runtime fields on the Models page, with the memory
    planner on: C{memory} (need, source, budget left), load C{progress},
    the C{unloadAt} countdown, C{lastUsed}, a C{failure}; screenshots at
    both widths and in both themes.
    """

    tearDown = UITests.tearDown
    open = UITests.open
    shot = UITests.shot

    def setUp(self):
        self.daemon, self.browser = shared("memory", MEMORY)
        self.shots = artifactsDir()
        self.browser.errors.clear()
        self.expectedStatuses: set[int] = set()

    def shotAll(self, pages, name, model):
        """
        Screenshot every page, C{model}'s row in view.
        """
        for label, page in pages.items():
            page.get_by_role("row").filter(has_text=model).scroll_into_view_if_needed()
            self.shot(page, f"models-{name}-{label}")

    def test_memoryProgressCountdownLastUsedAndFailure(self):
        expect = _expect()
        page = self.open("models", 1280, 900)
        pages = {"desktop-light": page, "desktop-dark": self.open("models", 1280, 900, "dark"),
                 "phone-light": self.open("models", 390, 844),
                 "phone-dark": self.open("models", 390, 844, "dark")}

        def row(modelId):
            return page.get_by_role("row").filter(has_text=modelId)

        left = page.get_by_label("GPU memory budget left")
        expect(left).to_have_text("GPU memory left: 6.0 GiB")
        expect(row("demo-large")).to_contain_text("4.0 GiB · declared")
        expect(row("demo-medium")).to_contain_text("unknown · runs alone until measured")
        # A model that fails: its reason and last lines (an unknown need
        # runs alone, so this goes first).
        self.expectedStatuses.add(502)
        page.get_by_role("button", name="Load demo-broken").click()
        failure = row("demo-broken").get_by_role("alert").filter(has_text="Failed to start")
        expect(failure).to_contain_text("(exit code 3)", timeout=20000)
        expect(failure.get_by_label("Last output lines")).to_contain_text("missing.gguf")
        # The first load teaches the load time: the second shows a
        # determinate progress bar against it.
        self.assertEqual(self.daemon.request("POST", "/api/models/load/demo-large")[0], 200)
        expect(left).to_have_text("GPU memory left: 2.0 GiB")
        expect(row("demo-large")).to_contain_text(re.compile(r"unloads in [45]:\d\d"))
        self.assertEqual(self.daemon.request("POST", "/api/models/unload/demo-large")[0], 200)
        expect(page.get_by_role("button", name="Load demo-large")).to_be_enabled()
        page.get_by_role("button", name="Load demo-large").click()
        bar = page.get_by_role("progressbar", name="Loading demo-large")
        expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^\d+$"))
        expect(row("demo-large")).to_contain_text(re.compile(r"loading… .* of ~\d"))
        self.shotAll(pages, "starting", "demo-large")
        expect(row("demo-large").get_by_text("ready", exact=True)).to_be_visible(timeout=20000)
        status, _ = self.daemon.request("POST", "/v1/chat/completions", {
            "model": "demo-small", "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(status, 200)
        small = row("demo-small")
        expect(small.get_by_text("ready", exact=True)).to_be_visible()
        expect(small.locator("dd").filter(has_text="just now")).to_be_visible()
        expect(row("demo-large").locator("dd").filter(has_text="never")).to_be_visible()
        expect(left).to_have_text("GPU memory left: 1.0 GiB")
        self.shotAll(pages, "memory", "demo-small")


@unittest.skipIf(SKIP, SKIP or "")
class SignInTests(unittest.TestCase):
    """
    With C{apiKeys}: the UI's own key prompt, never a Basic-auth pop-up.
    """

    def setUp(self):
        self.daemon, self.browser = shared("keys", "apiKeys: [ui-test-key]\n")
        self.browser.errors.clear()

    def test_theKeyPromptAWrongKeyAndSignOut(self):
        expect = _expect()
        page = self.browser.page()
        self.addCleanup(page.context.close)
        page.goto(self.daemon.base + "/ui/#/models")
        key = page.get_by_label("API key")
        expect(key).to_be_visible()
        page.screenshot(path=str(artifactsDir() / "signin-desktop-light.png"))
        key.fill("wrong-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Unauthorised: that API key was refused.")).to_be_visible()
        page.screenshot(path=str(artifactsDir() / "signin-refused-desktop-light.png"))
        page.get_by_label("API key").fill("ui-test-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Load demo-small")).to_be_visible()
        page.reload()   # the key is kept for the session
        expect(page.get_by_role("button", name="Load demo-small")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API key")).to_be_visible()
        console = [e for e in self.browser.errors if "401" not in e]
        self.assertEqual(console, [])


@unittest.skipIf(SKIP, SKIP or "")
class ConnectionTests(unittest.TestCase):
    def test_aDroppedStreamShowsStaleDataAndDisablesActions(self):
        expect = _expect()
        _, browser = shared("ui", "")
        browser.errors.clear()
        daemon = Daemon(demoConfig())
        self.addCleanup(daemon.stop)
        page = browser.page()
        self.addCleanup(page.context.close)
        page.goto(daemon.base + "/ui/#/models")
        load = page.get_by_role("button", name="Load demo-small")
        expect(load).to_be_enabled()
        daemon.stop()
        expect(page.get_by_role("alert").filter(has_text="data may be stale")).to_be_visible()
        expect(load).to_be_disabled()
        expect(page.get_by_role("button", name="Unload all")).to_be_disabled()
        page.screenshot(path=str(artifactsDir() / "models-disconnected-desktop-light.png"))
        # What was shown stays shown.
        expect(page.get_by_role("row").filter(has_text="demo-large")).to_be_visible()
        # llamaswap comes back on the same port: the page reconnects by itself.
        again = Daemon(demoConfig(), port=daemon.port)
        self.addCleanup(again.stop)
        expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible(timeout=20000)
        expect(load).to_be_enabled()
        page.get_by_role("link", name="Logs").click()
        expect(page.get_by_text("llamaswap restarted").first).to_be_visible()

    def test_aDisabledMonitorIsSaidSo(self):
        expect = _expect()
        _, browser = shared("ui", "")
        daemon = Daemon(demoConfig("performance: {disabled: true}\n"))
        self.addCleanup(daemon.stop)
        page = browser.page()
        self.addCleanup(page.context.close)
        page.goto(daemon.base + "/ui/#/performance")
        expect(page.get_by_text("The performance monitor is disabled")).to_be_visible()
