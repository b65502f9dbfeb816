"""The review page in headless Chromium (Debian's, driven by Playwright): sign in by typing the key, decide with
the keyboard, change a decision, and find every decision in ``scan_reviews`` on SQLite and PostgreSQL; a file
whose name is HTML is shown as text. Prints how long one decision takes from key press to the next item shown.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest
from sqlalchemy import text

from dfscan import db
from tests._browser import CHROMIUM, CHROMIUM_ARGS, playwright_driver  # noqa: F401 - fixture
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._review import HTML_NAME, World, world  # noqa: F401 - fixture

# The page as the test leaves it (the closing note's screenshot): DFSCAN_REVIEW_SCREENSHOT names where, else tmp.
SCREENSHOT_ENV = "DFSCAN_REVIEW_SCREENSHOT"

# Stamps the key press (capture phase: before the page's own handler) and the moment the item section shows
# another item (its data-index changes once the new item's DOM is in place).
TIMING = """() => {
  window.__pressed = 0; window.__shown = 0;
  document.addEventListener("keydown", () => { window.__pressed = performance.now(); }, { capture: true });
  new MutationObserver(() => { window.__shown = performance.now(); })
    .observe(document.getElementById("item"), { attributes: true, attributeFilter: ["data-index"] });
}"""


@pytest.fixture(scope="module")
def browser(playwright_driver):  # noqa: F811
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    try:
        b = playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - no browser here: skip with its reason
        pytest.skip(f"chromium could not start: {str(exc).splitlines()[0][:300]}")
    yield b
    b.close()


def _index(page) -> int:
    return int(page.locator("#item").get_attribute("data-index"))


def _press(page, key: str) -> float:
    """Press ``key`` and wait for the next item; milliseconds from the key press to the item shown."""
    before = _index(page)
    page.evaluate("() => { window.__shown = 0; }")
    page.keyboard.press(key)
    page.wait_for_function(f"() => Number(document.getElementById('item').dataset.index) !== {before}")
    return page.evaluate("() => window.__shown - window.__pressed")


def test_decide_with_the_keyboard_and_see_it_in_sql(browser, world: World, request, tmp_path: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    alerts: list[str] = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    try:
        page.goto(f"{world.url}/review?scan={world.scan_c}")
        page.get_by_label("API key").type(world.tokens["rita"])
        page.keyboard.press("Enter")
        page.wait_for_selector("#item[data-path]")
        page.evaluate(TIMING)
        order = page.evaluate("() => [...document.querySelectorAll('#queue .path')].map(e => e.textContent)")
        assert sorted(order) == world.paths_c

        times = [_press(page, key) for key in ("f", "r", "u")]
        assert _index(page) == 3
        page.keyboard.press("k")  # back to the third item, decided "unsure": change it
        page.wait_for_function("() => document.getElementById('item').dataset.index === '2'")
        times.append(_press(page, "r"))
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Saved: real')")

        expected = {order[0]: "fake", order[1]: "real", order[2]: "real"}
        engine = db.make_engine(world.db_url)
        try:
            with engine.connect() as conn:
                view = dict(conn.execute(text("SELECT path, decision FROM scan_reviews WHERE scan_id = :s"),
                                         {"s": world.scan_c}).all())
                kept = conn.execute(text("SELECT decision FROM reviews WHERE scan_id = :s AND path = :p ORDER BY id"),
                                    {"s": world.scan_c, "p": order[2]}).scalars().all()
        finally:
            engine.dispose()
        assert view == expected
        assert kept == ["unsure", "real"]  # the change is a new row; the first decision is kept

        page.keyboard.press("?")
        assert page.locator("#help").evaluate("d => d.open")
        page.keyboard.press("Escape")

        # The mouse: pick the file whose name is HTML from the list; it is shown as text, nothing of it runs.
        html_path = str(world.folder_c / HTML_NAME)
        page.locator("#queue button", has_text=HTML_NAME).click()
        page.wait_for_function("p => document.getElementById('item').dataset.path === p", arg=html_path)
        assert page.locator("#item h2").text_content() == html_path
        assert page.locator('img[src="x"]').count() == 0 and not alerts
        page.wait_for_function("() => { const i = document.querySelector('#item img.thumb');"
                               " return i && i.complete && i.naturalWidth > 0; }")
        assert page.get_by_role("button", name="f fake").is_visible()
        if "sqlite" in request.node.callspec.id:
            shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "review.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 0
        print(f"\nreview [{request.node.callspec.id}]: key press to next item shown, ms: "
              f"{', '.join(f'{t:.1f}' for t in times)} (median {statistics.median(times):.1f})")
    finally:
        context.close()
