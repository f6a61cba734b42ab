"""The web playground and /docs in a real browser (Debian's Chromium, driven by Playwright):
a key and a prompt, progress to 100, the image, the history after a reload, errors in words,
phone and desktop widths, keyboard use. Every request the page makes stays on this machine.
Screenshots of each step land in $DARKROOM_TEST_ARTIFACTS/playground (default test-artifacts)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.client.conftest import Server, one_task_generating
from tests.e2e.procs import pause_after_first_step

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("DARKROOM_TEST_ARTIFACTS", "test-artifacts")) / "playground"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    # The page forbids eval (its Content-Security-Policy); the test's own probes need it.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    yield page
    context.close()
    outside = [u for u in requests if not u.startswith((server.url, "data:", "blob:"))]
    assert not outside, f"requests left the machine: {outside}"
    assert requests  # the page did load through the listener


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_picture_from_key_and_prompt_then_history(page: Page, server: Server) -> None:
    # Every progress value the bar shows, sampled in the page.
    page.add_init_script(
        "window.seen = []; setInterval(() => { const p = document.getElementById('progress');"
        " if (p) window.seen.push(p.value); }, 20);"
    )
    answer = page.goto(f"{server.url}/playground")
    assert answer is not None and "default-src 'self'" in answer.headers["content-security-policy"]
    assert page.title() == "darkroom playground"
    shot(page, "01-empty")

    page.get_by_label("API key").fill(server.key)
    page.get_by_label("Prompt").fill("a lighthouse at dusk")
    page.get_by_label("Size").select_option("16:9")
    page.get_by_label("Seed").fill("1234")
    shot(page, "02-filled")
    pause = pause_after_first_step(server.env)  # the engine waits at its first step...
    page.get_by_label("Prompt").press("Control+Enter")  # the keyboard, not the mouse
    page.wait_for_function("document.getElementById('progress').value > 0", timeout=60_000)
    shot(page, "03-progress")
    pause.unlink()  # ...until the bar has shown it
    page.wait_for_function("document.getElementById('progress').value === 100", timeout=60_000)
    page.wait_for_function("document.getElementById('result-size').textContent !== ''")
    seen = page.evaluate("window.seen")
    assert any(0 < value < 100 for value in seen), seen  # a live bar, not a jump
    assert page.locator("#result-size").inner_text() == "1344 \u00d7 768"
    assert page.locator("#result-seed").inner_text() == "1234"
    assert page.locator("#result-expiry").inner_text() not in ("", "—")
    task_id = page.locator("#result-id").inner_text()
    assert page.locator("#status").inner_text().startswith("completed")
    shot(page, "04-done")

    page.reload()
    entry = page.locator(f"button[data-task-id='{task_id}']")
    assert "a lighthouse at dusk" in entry.inner_text()
    assert page.get_by_label("API key").input_value() == server.key  # kept in the browser
    entry.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('result-image').naturalWidth > 0")
    assert page.locator("#result-id").inner_text() == task_id
    shot(page, "05-history")


def test_errors_in_words_phone_width_and_tab_order(page: Page, server: Server) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{server.url}/playground/")
    page.get_by_label("Prompt").fill("a kite")
    page.get_by_role("button", name="Generate").click()
    assert "API key first" in page.get_by_role("alert").inner_text()

    page.get_by_label("API key").fill("sk-not-a-real-key-000000000000")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("!document.getElementById('error').hidden")
    assert "refused this API key" in page.get_by_role("alert").inner_text()
    shot(page, "06-phone-error")

    page.get_by_label("API key").fill(server.key)
    page.get_by_label("Prompt").fill("pedophilia")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('policy')")
    # Nothing wider than the phone's screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # Tab from the key reaches every control and then the button.
    page.get_by_label("API key").focus()
    order = []
    for _ in range(10):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
        if order[-1] == "generate":
            break
    assert order[-1] == "generate", order
    assert {"prompt", "size", "quality", "seed", "nsfw-check"} <= set(order), order


def test_a_waiting_task_is_cancelled_from_the_page(page: Page, server: Server) -> None:
    with one_task_generating(server):
        page.goto(f"{server.url}/playground")
        page.get_by_label("API key").fill(server.key)
        page.get_by_label("Prompt").fill("a picture nobody waits for")
        page.get_by_role("button", name="Generate").click()
        cancel = page.get_by_role("button", name="Cancel")
        cancel.wait_for(state="visible", timeout=30_000)  # pending, behind the held task
        assert "in the queue" in page.locator("#status").inner_text()
        shot(page, "08-cancel")
        cancel.click()
        page.wait_for_function("document.getElementById('error').textContent.includes('cancelled')")
        assert page.locator("#status").inner_text().startswith("failed")
        assert cancel.is_hidden()
        assert page.get_by_role("button", name="Generate").is_enabled()


def test_docs_render_from_local_assets(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/docs")
    page.get_by_text("/v1/images/generations", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("/v1/tasks/{task_id}/events", exact=True).first.wait_for()
    assert page.get_by_text("Stream a task's progress").count() >= 1
    shot(page, "07-docs")
