"""The web demo in a real browser: headless Chromium from the system packages, driven by Playwright (no browser
download), through upload -> click -> answer -> mask shown -> a second round naming [0], plus a bad upload; the
page's results are checked and a screenshot is taken (PIXELQA_DEMO_SCREENSHOT=path keeps a copy)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_demo_api import running_demo
from test_predict_units import H, W, write_video

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium; .ci/install)"
    ),
]


def image_of(page, selector: str) -> np.ndarray:
    """The RGB pixels the page shows in an <img>, fetched with the page's own session."""
    src = page.eval_on_selector(selector, "img => img.src")
    response = page.request.get(src)
    assert response.ok, src
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_upload_click_answer_mask_and_second_round_in_chromium(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    write_video(tmp_path / "clip.mp4", 12)
    (tmp_path / "notes.txt").write_text("not a video")
    shot = tmp_path / "demo.png"
    with running_demo() as (base, demo), sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS
        )
        try:
            page = context.new_page()
            page.set_default_timeout(90_000)
            page.goto(base + "/")
            # a bad upload: one line on the page, no server path
            page.set_input_files("#file", str(tmp_path / "notes.txt"))
            expect(page.locator("#message")).to_contain_text("'notes.txt' is not an image")
            assert str(demo.store.root) not in page.content() and "Traceback" not in page.content()
            # upload a video; a click on frame 3 is a point prompt there
            page.set_input_files("#file", str(tmp_path / "clip.mp4"))
            expect(page.locator("#media-name")).to_contain_text("clip.mp4: video, 8 frame(s), 64x48")
            expect(page.locator("#message")).to_be_hidden()
            page.locator("#frame-slider").fill("3")
            raw = image_of(page, "#frame-img")
            box = page.locator("#draw").bounding_box()
            x, y = 25, 18  # pixels of the frame: inside the bright block of frame 3 of the clip
            page.mouse.click(box["x"] + x * box["width"] / W, box["y"] + y * box["height"] / H)
            expect(page.locator("#prompt-list li")).to_have_count(1)
            expect(page.locator("#prompt-list li").first).to_contain_text("point (25, 18) on frame 4")
            page.fill("#question", "What is this object?")
            page.click("#ask")
            expect(page.locator("#chat li")).to_have_count(1)
            expect(page.locator("#progress")).to_be_hidden()
            expect(page.locator("#message")).to_be_hidden()
            session = next(iter(demo.store._sessions.values()))
            first = session.latest
            expect(page.locator("#answer")).to_have_text(first.answer.strip() or first.answer, use_inner_text=False)
            assert abs(first.prompts[0].x - 25 / W) < 1.5 / W and abs(first.prompts[0].y - 18 / H) < 1.5 / H
            assert first.prompts[0].frame == 3
            # the mask is shown: the frame now displayed is the overlay, which differs from the frame where the
            # object's mask is set (and only there, up to the outline)
            expect(page.locator("#frame-img")).to_have_attribute("src", "/api/overlay/1/3")
            page.wait_for_function("document.getElementById('frame-img').complete")
            shown = image_of(page, "#frame-img")
            f = shown.shape[0] // H  # small frames are enlarged in overlays
            small = shown[::f, ::f].astype(int)
            mask = first.memory[0][3].numpy()
            assert mask.any() and (~mask).any()
            changed = np.abs(small - raw.astype(int)).sum(-1) > 30
            assert changed[mask].mean() > 0.9, changed[mask].mean()
            expect(page.locator("#memory li.memory-item")).to_have_count(1)
            expect(page.locator("#memory li[data-id='0']")).to_contain_text("[0] frames")
            assert page.eval_on_selector("#memory li[data-id='0'] img", "img => img.naturalWidth") == 96
            expect(page.locator("#dl-overlay")).to_have_text("overlay video (MP4)")
            # the second round names the remembered object and adds a mask drawn below it (object [1])
            page.check("input[name=tool][value=mask]")
            at = lambda px, py: (box["x"] + px * box["width"] / W, box["y"] + py * box["height"] / H)  # noqa: E731
            page.mouse.move(*at(20, 38))
            page.mouse.down()
            for px in range(22, 52, 2):
                page.mouse.move(*at(px, 38))
            page.mouse.up()
            expect(page.locator("#prompt-list li").first).to_contain_text("mask on frame 4")
            page.fill("#question", "Is [0] above it?")
            page.click("#ask")
            expect(page.locator("#chat li")).to_have_count(2)
            expect(page.locator("#progress")).to_be_hidden()
            expect(page.locator("#chat li").nth(1)).to_contain_text("You: Is [0] above it?")
            assert len(session.turns) == 2 and "[0]" in session.turns[1].model_text
            drawn = session.latest.prompts[0]
            assert drawn.object_id == 1 and drawn.frame == 3 and session.turns[1].text.startswith("[1] <|ref|>")
            assert drawn.mask[38, 22:50].all() and not drawn.mask[:30].any() and not drawn.mask[:, 55:].any()
            expect(page.locator("#memory li.memory-item")).to_have_count(2)
            expect(page.locator("#prompt-list li")).to_have_count(0)
            expect(page.locator("#frame-img")).to_have_attribute("src", "/api/overlay/2/3")
            with page.expect_download() as download:
                page.click("#dl-zip")
            assert download.value.suggested_filename == "pixelqa_turn2_masks.zip"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[0] > 300 and picture.std() > 10  # a rendered page, not a blank one
    if os.environ.get("PIXELQA_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["PIXELQA_DEMO_SCREENSHOT"])
