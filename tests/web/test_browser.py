"""End to end in headless Chromium (``browser.py``): upload, label, overlay on the 2D page;
volumes in the volume viewer are tested in test_volume_viewer.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browser import download, open_page, screenshot, segment_in_page
from PIL import Image
from web_helpers import default_settings

from predict_helpers import crop_mri, kvasir_image
from ssam.web import app as web_app
from ssam.web.server import BackgroundServer


@pytest.fixture(scope="module")
def plain_server(web_predictor, upload_root) -> Iterator[BackgroundServer]:
    """A server whose package lacks the built volume viewer: volumes show one plane."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(web_app, "VIEWER_DIR", upload_root / "no-viewer")
        app = web_app.create_app(web_predictor, default_settings(upload_root))
    assert app.state.services.viewer is None
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture()
def plain_page(browser_context, plain_server) -> Iterator:
    yield from open_page(browser_context, plain_server)


def test_segment_an_image_in_the_browser(page, shared_data, tmp_path):
    image = kvasir_image(shared_data)
    width, height = Image.open(image).size
    segment_in_page(page, image, ["polyp"])
    screenshot(page, "page-2d-kvasir")
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [width, height]
    assert page.is_visible("#canvas") and not page.is_visible("#placeholder")
    rows = page.locator("#legend tr.legend-row")
    assert rows.count() == 1 and rows.first.get_attribute("data-label") == "polyp"
    assert page.locator("#legend .swatch").count() == 1
    assert page.inner_text("#progress-phase") == "Done"
    label_map = Image.open(download(page, "#download-labels", tmp_path))
    assert label_map.size == (width, height) and label_map.mode in ("L", "P")
    page.fill("#opacity", "80")
    overlay = Image.open(download(page, "#download-overlay", tmp_path))
    assert overlay.size[0] == width and overlay.size[1] > height  # legend strip below


def test_volume_slices_and_a_typed_label(plain_page, shared_data, tmp_path):
    page = plain_page
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", first=80, count=3)
    segment_in_page(page, volume, ["lung"], custom="lesion")
    assert "volume viewer is not built" in page.inner_text("#viewer-note")
    assert page.is_visible("#slice-control")
    page.fill("#slice", "0")
    page.wait_for_function("document.getElementById('slice-value').textContent === '1 / 3'")
    names = page.locator("#legend tr.legend-row").evaluate_all(
        "rows => rows.map(r => r.dataset.label)"
    )
    assert names == ["lung", "lesion"]
    assert "lesion" in page.inner_text("#warnings")  # not a trained label
    report = json.loads(download(page, "#download-report", tmp_path).read_text())
    counts = page.locator("#legend tr.legend-row td.num:nth-child(3)").all_inner_texts()
    assert counts == [f"{report['sizes'][n]['voxels']:,}" for n in names]  # per-label masks
    assert "own mask" in page.inner_text("#legend-rule")
    screenshot(page, "page-volume-without-viewer")
    assert download(page, "#download-labels", tmp_path).name == "label_map.nii.gz"


def test_click_to_refine_and_undo(plain_page, shared_data, tmp_path):
    page = plain_page
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", first=80, count=2)
    segment_in_page(page, volume, ["polyp", "lung"])
    assert page.is_visible("#refine-controls") and page.is_disabled("#refine-undo")
    before = page.evaluate("() => document.getElementById('canvas').toDataURL()")
    from playwright.sync_api import expect

    status = page.locator("#refine-status")
    page.check("#refine-mode")
    page.select_option("#refine-label", "lung")
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    page.wait_for_selector("#refine-undo:not([disabled])")
    expect(status).to_contain_text("1 point(s)")
    page.keyboard.down("Shift")
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.keyboard.up("Shift")
    expect(status).to_contain_text("2 point(s)")
    assert page.evaluate("() => document.getElementById('canvas').toDataURL()") != before
    screenshot(page, "page-volume-without-viewer-refined")
    page.click("#refine-undo")
    expect(status).to_contain_text("1 point(s)")
    page.click("#refine-undo")
    page.wait_for_selector("#refine-undo[disabled]", state="attached")
    page.uncheck("#refine-mode")
    assert page.evaluate("() => document.getElementById('canvas').toDataURL()") == before


def test_new_file_clears_the_result_and_the_label_limit_is_checked(page, shared_data, tmp_path):
    segment_in_page(page, kvasir_image(shared_data), ["polyp"])
    assert page.get_attribute("#download-labels", "aria-disabled") == "false"
    other = tmp_path / "other.png"
    Image.new("RGB", (40, 30), (90, 20, 20)).save(other)
    page.set_input_files("#file-input", str(other))
    page.wait_for_selector('#viewer[data-state="empty"]')
    assert not page.is_visible("#canvas") and page.locator("#legend tr.legend-row").count() == 0
    assert page.get_attribute("#download-labels", "aria-disabled") == "true"
    assert page.get_attribute("#download-labels", "href") is None
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    for k in range(17):  # the server allows 16 (GET /v1/labels: limits.max_labels)
        page.fill("#custom-label", f"organ {k}")
        page.click("#custom-label-form button")
    page.click("#segment-button")
    assert "Too many labels" in page.inner_text("#error")
    assert posts == []  # refused before sending
