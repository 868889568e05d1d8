"""The rating page end to end in headless Chromium: rating by clicking and by keyboard, skip and undo,
the rater name kept across reloads, and model output containing markup shown as text (no script runs).

Needs Playwright's Python package and a Chromium binary (``apt-get install chromium``; CI installs it);
``RLFT_CHROMIUM`` may point at another binary. No browser download is needed."""

import os
import re
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("fastapi")
CHROMIUM = os.environ.get("RLFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no chromium binary (apt-get install chromium, or set RLFT_CHROMIUM)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from rlft.feedback.server import start  # noqa: E402
from rlft.feedback.store import Store  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # generous: the machine may be loaded
expect.set_options(timeout=TIMEOUT_MS)
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> & <b>bold</b>'


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=120_000)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("dialog", lambda d: (pg.errors.append("dialog: " + d.message), d.dismiss()))
    yield pg
    context.close()


def _login(page, url, name):
    page.goto(url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#rater-input", name)
    page.click("#login-form button[type=submit]")


def test_rate_by_clicking_and_keyboard(tmp_path, page):
    db = tmp_path / "feedback.sqlite"
    with Store(db) as s:
        s1, s2, s3 = s.add_samples("run", 0, ["Add 2+2"] * 3, ["4", "five", "22"], [0, 1, 2])
        (pair,) = s.add_samples("run", 1, ["Greet"] * 2, ["hi", "hello there"], [0, 0], pairs=[(0, 1)])
    meta = page.locator("#meta")
    with start(db) as server:
        _login(page, server.url, "alice")
        # the newest batch first: the pair. Click B, write a comment, click Submit.
        expect(meta).to_have_text(re.compile(rf"item {pair}$"))
        expect(page.locator("#completion-b")).to_have_text("hello there")
        page.click("#pair-buttons button[data-value=b]")
        page.fill("#comment", "B is friendlier")
        page.click("#submit")
        # a score item: click 4, then Submit
        expect(meta).to_have_text(re.compile(rf"item {s1}$"))
        expect(page.locator("#pair-buttons")).to_be_hidden()
        page.click("#score-buttons button[data-value='4']")
        expect(page.locator("#score-buttons button[data-value='4']")).to_have_class("selected")
        page.click("#submit")
        # by keyboard: 2, Enter
        expect(meta).to_have_text(re.compile(rf"item {s2}$"))
        page.keyboard.press("2")
        page.keyboard.press("Enter")
        # s skips; nothing left for alice; u brings it back; 5 Enter rates it
        expect(meta).to_have_text(re.compile(rf"item {s3}$"))
        page.keyboard.press("s")
        expect(page.locator("#empty")).to_be_visible()
        page.keyboard.press("u")
        expect(page.locator("#rate")).to_be_visible()
        expect(meta).to_have_text(re.compile(rf"item {s3}$"))
        expect(page.locator("#score-buttons button[data-value='5']")).not_to_have_class("selected")
        page.keyboard.press("5")
        page.keyboard.press("Enter")
        expect(page.locator("#empty")).to_be_visible()
        # u takes back the 5: the item returns with 5 selected; change it to 3 with a comment
        page.keyboard.press("u")
        expect(page.locator("#rate")).to_be_visible()
        expect(meta).to_have_text(re.compile(rf"item {s3}$"))
        expect(page.locator("#score-buttons button[data-value='5']")).to_have_class("selected")
        page.keyboard.press("3")
        page.click("#comment")
        page.keyboard.type("typing 1 a s u here does nothing")
        page.keyboard.press("Enter")  # Enter in the comment box submits
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#progress")).to_contain_text("4 rated · 0 pending")
        expect(page.locator("#rater-rows tr.me td").nth(1)).to_have_text("4")
        # the name is remembered: a reload goes straight to work
        page.reload()
        expect(page.locator("#rater-name")).to_have_text("alice")
        expect(page.locator("#login")).to_be_hidden()
    with Store(db) as s:
        rows = s.ratings(include_skips=True)
    got = {r["item_id"]: (r["rater"], r["score"], r["choice"], r["comment"]) for r in rows}
    assert got == {pair: ("alice", None, "b", "B is friendlier"), s1: ("alice", 4, None, ""),
                   s2: ("alice", 2, None, ""), s3: ("alice", 3, None, "typing 1 a s u here does nothing")}
    assert len(rows) == 4  # the skip and the first rating of s3 were undone
    assert page.errors == []


def test_model_output_is_shown_as_text(tmp_path, page):
    db = tmp_path / "feedback.sqlite"
    with Store(db) as s:
        s.add_samples("run", 0, ["<i>prompt</i> " + XSS] * 2, [XSS, "plain"], [0, 0], pairs=[(0, 1)])
    with start(db) as server:
        _login(page, server.url, '<img src=x onerror="window.__xss = 3">')
        a = page.locator("#completion-a")
        expect(a).to_have_text(XSS)  # the markup is there, literally, as text
        expect(page.locator("#prompt")).to_have_text("<i>prompt</i> " + XSS)
        expect(page.locator("#rater-rows td").first).to_have_text('<img src=x onerror="window.__xss = 3">')
        assert page.locator("#rate img, #rate script, #rate b, #rate i, aside img").count() == 0
        page.keyboard.press("t")
        page.keyboard.press("Enter")
        expect(page.locator("#empty")).to_be_visible()
        assert page.evaluate("window.__xss") is None  # no script ran, no handler fired
    assert page.errors == []
    with Store(db) as s:
        assert [r["choice"] for r in s.ratings()] == ["tie"]


def test_meta_line_and_one_lease_after_skip_and_undo(tmp_path, page):
    """The line above the prompt names no internal run id; skip then undo leaves the rater one open item."""
    db = tmp_path / "feedback.sqlite"
    run = "20261130-153940-4242"  # what the human reward names a run by default: time and pid
    with Store(db) as s:
        i1, i2, i3 = s.add_samples(run, 5, ["Add 2+2"] * 3, ["4", "five", "22"], [0, 1, 2])
    meta = page.locator("#meta")
    with start(db) as server:
        _login(page, server.url, "alice")
        expect(meta).to_have_text(re.compile(rf"item {i1}$"))
        assert run not in meta.text_content() and "run" not in meta.text_content()
        expect(page.locator("#progress")).to_contain_text("(1 open now)")
        page.keyboard.press("s")
        expect(meta).to_have_text(re.compile(rf"item {i2}$"))
        page.keyboard.press("u")
        expect(meta).to_have_text(re.compile(rf"item {i1}$"))
        expect(page.locator("#message")).to_contain_text(f"Took back your skip of item {i1}")
        expect(page.locator("#progress")).to_contain_text("0 rated · 3 pending (1 open now)")
        # the same after a rating and its undo
        page.keyboard.press("4")
        page.keyboard.press("Enter")
        expect(meta).to_have_text(re.compile(rf"item {i2}$"))
        page.keyboard.press("u")
        expect(meta).to_have_text(re.compile(rf"item {i1}$"))
        expect(page.locator("#progress")).to_contain_text("0 rated · 3 pending (1 open now)")
    assert page.errors == []
