"""The page in a real headless Chromium (Debian's `chromium`, driven by playwright): upload an image,
see its reconstruction and token map, click a token and see its exemplars, open an entry in the
atlas, sample. Screenshots are kept in the test's tmp_path (and in $VQGAN_LC_SCREENSHOTS when set)."""
import os
import shutil
import threading
import time

import pytest

from vqgan_lc.app import AppState, serve

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and os.access(p, os.X_OK)), None)
# Upper bound for every page wait (the page's default timeout), not a speed target: tokenizing and sampling run on this machine's
# CPU, and a loaded CI machine (the suite runs two workers on two cores) is many times slower
# than a quiet one (a 20 s bound once ran out there; the same test takes 5 s alone).
SLOW_MS = 120_000
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with playwright "
                               "(pip install 'vqgan-lc[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium; "
                                ".ci/run installs it)")


@pytest.fixture(scope="module")
def app_url(tiny_world):
    state = AppState(str(tiny_world["tokenizer"]), data=str(tiny_world["data"]), generator=str(tiny_world["generator"]))
    server = serve(state, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url, state
    server.shutdown()
    server.server_close()


def _shot(page, tmp_path, name):
    path = tmp_path / f"app-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("VQGAN_LC_SCREENSHOTS"):
        os.makedirs(os.environ["VQGAN_LC_SCREENSHOTS"], exist_ok=True)
        shutil.copy(path, os.path.join(os.environ["VQGAN_LC_SCREENSHOTS"], path.name))
    assert path.stat().st_size > 5000


def _exemplars_loaded(page, panel):
    page.wait_for_function(f"""() => {{
        const imgs = [...document.querySelectorAll('{panel} img.exemplar')];
        return imgs.length > 0 && imgs.every((im) => im.complete && im.naturalWidth === 64);
    }}""")


def test_tokenize_click_a_token_open_the_atlas_and_sample(app_url, tiny_world, tmp_path):
    url, state = app_url
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(SLOW_MS)
            page.goto(url)
            page.wait_for_function("document.getElementById('summary').textContent.includes('8 entries')")

            # Tokenize: upload an image -> original, reconstruction, token map
            page.set_input_files("#upload", str(tiny_world["data"] / "class1" / "2.png"))
            page.wait_for_function("document.getElementById('reconstruction').src.startsWith('data:image/png')")
            colours = page.evaluate("""() => {
                const data = document.getElementById('tokenmap').getContext('2d').getImageData(0, 0, 256, 256).data;
                const seen = new Set();
                for (let i = 0; i < data.length; i += 4 * 97) seen.add(data[i] + ',' + data[i + 1] + ',' + data[i + 2]);
                return seen.size;
            }""")
            assert colours > 1  # a coloured token map, not a blank canvas
            # click the top-left token: its entry, usage and exemplar patches appear
            first_id = page.evaluate("TOKENS.ids[0]")
            page.click("#tokenmap", position={"x": 10, "y": 10})
            page.wait_for_selector("#tokenize-entry .entry-title")
            assert page.inner_text("#tokenize-entry .entry-title").startswith(f"entry {first_id} ")
            assert "used " in page.inner_text("#tokenize-entry .entry-usage")
            _exemplars_loaded(page, "#tokenize-entry")
            _shot(page, tmp_path, "tokenize")

            # Atlas: open an entry by id, list the most used, see the histogram
            page.click("#tabs button[data-tab=atlas]")
            page.fill("#entry-search", "4")
            page.click("#entry-open")
            page.wait_for_function("document.querySelector('#atlas-entry .entry-title')?.textContent === "
                                   "'entry 4 · class class1'")
            _exemplars_loaded(page, "#atlas-entry")
            page.click("#browse-most")
            page.wait_for_selector("#entry-list .tile")
            assert page.locator("#entry-list .tile").count() == 8
            assert page.locator("#usage-svg rect").count() >= 2
            _shot(page, tmp_path, "atlas")
            # an error is one readable line in the page
            page.fill("#entry-search", "99")
            page.click("#entry-open")
            page.wait_for_selector("#error:not([hidden])")
            assert page.inner_text("#error") == "entry 99 does not exist: the codebook has entries 0..7"

            # Generate: class, guidance, seed -> samples with their token maps
            page.click("#tabs button[data-tab=generate]")
            page.fill("#gen-count", "3")
            page.click("#gen-go")
            page.wait_for_function("document.querySelectorAll('#samples img').length === 3")
            assert page.locator("#samples canvas.sample-map").count() == 3
            assert "distinct entries" in page.inner_text("#gen-summary")
            assert page.is_hidden("#error")
            _shot(page, tmp_path, "generate")
            assert "Traceback" not in page.content()
        finally:
            browser.close()
