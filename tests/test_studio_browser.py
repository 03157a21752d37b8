"""The studio in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

Screenshots go to the test's tmp folder; with POKEGAN_STUDIO_SCREENSHOT=docs/studio.png the
full-page one is also written there (that is how the picture in docs/sampling.md is made).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from stylegan.checkpoint import export_generator
from stylegan.sampling import generate, save_png
from stylegan.studio import ModelSource, StudioLimits, create_app
from stylegan.training.networks import Generator
from tests.helpers import tiny_model_config, write_tiny_pokedex

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium): browser test skipped", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright not installed: browser test skipped")
pytest.importorskip("uvicorn")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A tiny 16x16 export, named by a tiny Pokédex, served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    torch.manual_seed(0)
    G = Generator(tiny_model_config(fmap_base=64, fmap_max=32))
    folder = tmp_path_factory.mktemp("studio-browser")
    export_generator(G.eval(), folder / "export")
    source = ModelSource(str(folder / "export"), pokedex=write_tiny_pokedex(folder / "pokedex"))
    app = create_app(source, StudioLimits(max_project_steps=50), perceptual=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the studio server did not start"
        time.sleep(0.05)
    save_png(generate(G, seeds=[42], truncation_psi=0.7)[0], folder / "upload.png")
    yield f"http://127.0.0.1:{port}/", folder
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_studio_in_chromium(studio: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, folder = studio
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            cells = page.locator("#grid .cell img")
            expect(cells).to_have_count(16, timeout=30_000)
            srcs = lambda: page.eval_on_selector_all("#grid .cell img", "els => els.map(e => e.src)")  # noqa: E731
            first = srcs()
            assert len(set(first)) > 1  # different seeds, different pictures
            # Each tile's name under it, its top 3 on hover.
            names = page.locator("#grid .cell .name")
            expect(names).to_have_count(16)
            hover = names.first.get_attribute("title")
            assert names.first.inner_text().strip() and hover.startswith("looks like ") and hover.count("%") == 3
            assert page.locator("#grid .cell img").first.get_attribute("title") == hover

            # Move the psi slider all the way down (keyboard, as a person would): every seed becomes the average.
            page.locator("#psi").focus()
            page.keyboard.press("Home")
            expect(page.locator("#psi-value")).to_have_text("0.00")
            page.wait_for_function("() => { const s = [...document.querySelectorAll('#grid .cell img')]"
                                   ".map(e => e.src); return s.length === 16 && new Set(s).size === 1; }",
                                   timeout=30_000)
            assert srcs()[0] != first[0]
            page.screenshot(path=str(tmp_path / "psi0.png"))
            page.keyboard.press("End")  # psi 1
            expect(page.locator("#psi-value")).to_have_text("1.00")
            page.wait_for_function("() => new Set([...document.querySelectorAll('#grid .cell img')].map(e => e.src))"
                                   ".size === 16", timeout=30_000)

            # Pin two, mix by coarse styles: a 3x3 table, blank corner, parents on the edges.
            page.locator("#grid .cell").nth(0).locator(".pin-btn").click()
            expect(page.locator("#pinned .pin")).to_have_count(1)
            page.locator("#grid .cell").nth(1).locator(".pin-btn").click()
            expect(page.locator("#pinned .pin")).to_have_count(2)
            page.locator("#mix").click()
            expect(page.locator("#mix-grid td.mixed img")).to_have_count(4, timeout=30_000)
            assert page.locator("#mix-grid tr").count() == 3 and page.locator("#mix-grid td.blank").count() == 1
            grid = page.eval_on_selector_all("#mix-grid tr", "rows => rows.map(r => [...r.cells].map("
                                             "c => c.querySelector('img') ? c.querySelector('img').src : null))")
            src0, src1 = grid[0][1], grid[0][2]  # sources across the top
            dst0, dst1 = grid[1][0], grid[2][0]  # destinations down the left
            assert grid[0][0] is None and src0 == dst0 and src1 == dst1  # both axes are the pinned pair
            assert grid[1][1] == dst0 and grid[2][2] == dst1  # an image mixed with itself is itself
            # Coarse styles from one parent, the rest from the other: unlike both.
            assert grid[1][2] not in (dst0, src1) and grid[2][1] not in (dst1, src0)

            # Interpolation plays as an animation.
            page.locator("#steps").fill("6")
            page.locator("#play").click()
            anim = page.locator("#anim")
            expect(anim).to_be_visible(timeout=30_000)
            expect(anim).to_have_attribute("data-frames", "12")  # 2 transitions (looped) x 6
            a = anim.get_attribute("src")
            page.wait_for_function("a => document.getElementById('anim').src !== a", arg=a, timeout=10_000)
            page.locator("#stop").click()

            # Upload a picture: it comes back projected, pinned, and editable.
            page.locator("#upload").set_input_files(str(folder / "upload.png"))
            page.locator("#project-steps").fill("20")
            page.locator("#project").click()
            expect(page.locator("#projection-error")).to_contain_text("mean |error|", timeout=60_000)
            expect(page.locator("#pinned .pin")).to_have_count(3, timeout=30_000)
            expect(page.locator("#projection figure img")).to_have_count(2)
            assert "projection p1" in page.locator("#pinned").inner_text()
            err = page.locator("#projection-error").inner_text()
            got, start = float(err.split("|error| ")[1].split("/")[0]), float(err.split("from ")[1].split(" ")[0])
            assert got < start
            assert not errors, errors
            shot = tmp_path / "studio.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("POKEGAN_STUDIO_SCREENSHOT"):  # 256 colours: a small PNG for docs/sampling.md
                from PIL import Image

                Image.open(shot).convert("RGB").quantize(256).save(os.environ["POKEGAN_STUDIO_SCREENSHOT"],
                                                                    optimize=True)
        finally:
            browser.close()
