"""The volume viewer (NiiVue, built by scripts/build-web.sh) in headless Chromium with
software WebGL: three planes, orientation from the affine, window/level, wheel and key
slicing, zoom, crosshair read-out, refine clicks, a DICOM series and its DICOM-SEG.

Each state is saved under ``browser.SCREENSHOTS`` (``volume-*.png``).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from browser import download, require, screenshot, segment_in_page, viewer_missing
from PIL import Image
from playwright.sync_api import expect
from test_dicom_uploads import write_series

from predict_helpers import crop_mri, kvasir_image
from ssam.data.io import read_image

SHAPE = (40, 48, 10)  # I, J, K
SPACING = (2.0, 2.0, 3.0)
MARKER = 1000.0  # brightest value: only the marker is white under the "full" window


def phantom(path: Path, flip_x: bool) -> Path:
    """A body-like ellipse (values 100-300) with a bright bar on the patient's right.

    NIfTI world space is RAS+: x grows towards the patient's right. The bar lies at world
    x > 0 in both files; with ``flip_x`` the array stores x reversed (the affine's x column
    negative), so only a viewer that reads the affine shows it on the same side for both.
    """
    n_i, n_j, n_k = SHAPE
    i, j = np.meshgrid(np.arange(n_i), np.arange(n_j), indexing="ij")
    body = ((i - n_i / 2 + 0.5) / (n_i * 0.42)) ** 2 + ((j - n_j / 2 + 0.5) / (n_j * 0.42)) ** 2
    rng = np.random.default_rng(7)
    data = np.zeros(SHAPE, np.float32)
    for k in range(n_k):
        data[..., k] = (body < 1) * (100 + 200 * rng.random((n_i, n_j)) * (i / n_i))
    right = slice(n_i - 9, n_i - 5)  # high i: world x > 0 with a positive x column
    data[right, n_j // 2 - 3 : n_j // 2 + 3, :] = MARKER
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-(n_i - 1) * SPACING[0] / 2, -(n_j - 1) * SPACING[1] / 2, 0.0]
    if flip_x:
        data = data[::-1].copy()
        affine[0, 0], affine[0, 3] = -SPACING[0], (n_i - 1) * SPACING[0] / 2
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def tiles(page) -> dict[int, tuple[int, int, int, int]]:
    """NiiVue's 2D tiles on the canvas: plane (0 axial, 1 coronal, 2 sagittal) -> left, top,
    width, height in canvas pixels."""
    raw = page.evaluate(
        """async () => {
          const { view } = await import('/static/volume.js');
          return view.nv.screenSlices.map(s => [s.axCorSag, Array.from(s.leftTopWidthHeight)]);
        }"""
    )
    found = {}
    for plane, (left, top, width, height) in raw:
        if plane <= 2:
            if width < 0:  # radiological tiles are mirrored: negative width
                left, width = left + width, -width
            found[plane] = (round(left), round(top), round(width), round(height))
    return found


def canvas_picture(page, name: str) -> np.ndarray:
    return np.asarray(Image.open(screenshot(page, name, "#gl")).convert("RGB")).astype(int)


def crop(picture: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, width, height = box
    return picture[top : top + height, left : left + width]


def white_centre_x(tile: np.ndarray) -> float:
    """Mean column of the near-white pixels, as a fraction of the tile's width."""
    cols = np.nonzero((tile > 235).all(axis=-1))[1]
    assert cols.size > 10, "the marker is not visible"
    return float(cols.mean()) / tile.shape[1]


def click_tile(page, plane: int, fx: float, fy: float, shift: bool = False) -> None:
    """Click at fractions (fx, fy) of a plane's tile (canvas pixels = CSS pixels here), where
    the tile is now."""
    left, top, width, height = tiles(page)[plane]
    origin = page.locator("#gl").bounding_box()
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(origin["x"] + left + fx * width, origin["y"] + top + fy * height)
    if shift:
        page.keyboard.up("Shift")


def readout_voxel(page) -> list[int]:
    return [int(v) for v in page.get_attribute("#readout", "data-voxel").split(",")]


@pytest.fixture()
def volume_page(page):
    require(viewer_missing())
    page.set_viewport_size({"width": 1440, "height": 1000})
    return page


def test_three_planes_and_orientation_from_the_affine(volume_page, tmp_path):
    page = volume_page
    sides = {}
    for flip in (False, True):
        path = phantom(tmp_path / f"phantom{int(flip)}.nii.gz", flip_x=flip)
        segment_in_page(page, path, ["lung"])
        page.wait_for_selector('#volume-viewer[data-state="ready"]')
        assert page.is_visible("#volume-tools") and not page.is_visible("#slice-control")
        page.fill("#opacity", "0")
        page.uncheck("#outline")
        page.select_option("#window-preset", "full")
        assert page.input_value("#wl-width") == "1000"  # 0 to the marker's 1000
        boxes = tiles(page)
        assert sorted(boxes) == [0, 1, 2]
        picture = canvas_picture(page, f"volume-phantom-flip{int(flip)}-radiological")
        for plane, box in boxes.items():
            tile = crop(picture, box)
            assert tile.std() > 20, f"plane {plane} is blank"
        sides[flip, "radiological"] = [white_centre_x(crop(picture, boxes[p])) for p in (0, 1)]
        page.select_option("#convention", "neurological")
        picture = canvas_picture(page, f"volume-phantom-flip{int(flip)}-neurological")
        sides[flip, "neurological"] = [white_centre_x(crop(picture, boxes[p])) for p in (0, 1)]
        page.select_option("#convention", "radiological")
    # The patient's right: the screen's left in radiological convention, right in
    # neurological, in the axial and the coronal plane, whichever way the array is stored.
    for flip in (False, True):
        assert all(x < 0.4 for x in sides[flip, "radiological"]), sides
        assert all(x > 0.6 for x in sides[flip, "neurological"]), sides


def test_window_slicing_zoom_and_read_out(volume_page, shared_data, tmp_path):
    page = volume_page
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", first=70, count=12)
    segment_in_page(page, volume, ["lung"], custom="lesion")
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    assert page.input_value("#window-preset") == "auto"  # MRI: no CT window
    boxes = tiles(page)
    axial = boxes[0]
    before = crop(canvas_picture(page, "volume-mri-auto-window"), axial)
    screenshot(page, "volume-mri-page")

    # Window/level: a preset sets both numbers and changes the picture; typed values too.
    page.select_option("#window-preset", "brain")
    assert (page.input_value("#wl-level"), page.input_value("#wl-width")) == ("40", "80")
    brain = crop(canvas_picture(page, "volume-mri-brain-window"), axial)
    assert np.abs(brain - before).mean() > 5
    page.fill("#wl-level", "300")
    page.fill("#wl-width", "200")
    page.press("#wl-width", "Enter")
    assert page.input_value("#window-preset") == "custom"
    typed = crop(canvas_picture(page, "volume-mri-typed-window"), axial)
    assert np.abs(typed - brain).mean() > 5
    # Right-drag windows (the numbers follow, the preset becomes "custom"); a double-click
    # goes back to "auto".
    page.select_option("#window-preset", "auto")
    auto = (page.input_value("#wl-level"), page.input_value("#wl-width"))
    origin = page.locator("#gl").bounding_box()
    centre = (origin["x"] + axial[0] + axial[2] / 2, origin["y"] + axial[1] + axial[3] / 2)
    page.mouse.move(*centre)
    page.mouse.down(button="right")
    page.mouse.move(centre[0] + 80, centre[1] - 60, steps=6)
    page.mouse.up(button="right")
    assert page.input_value("#window-preset") == "custom"
    assert (page.input_value("#wl-level"), page.input_value("#wl-width")) != auto
    page.mouse.dblclick(*centre)
    assert page.input_value("#window-preset") == "auto"
    assert (page.input_value("#wl-level"), page.input_value("#wl-width")) == auto

    # The wheel over the axial tile steps its slice; keys step the active plane.
    start = readout_voxel(page)
    origin = page.locator("#gl").bounding_box()
    page.mouse.move(origin["x"] + axial[0] + axial[2] / 2, origin["y"] + axial[1] + axial[3] / 2)
    page.mouse.wheel(0, -120)
    expect(page.locator("#readout")).not_to_have_attribute("data-voxel", ",".join(map(str, start)))
    after_wheel = readout_voxel(page)
    assert after_wheel[:2] == start[:2] and abs(after_wheel[2] - start[2]) == 1
    assert page.inner_text("#volume-slice") == f"axial slice {after_wheel[2] + 1} / 12"
    page.focus("#volume-viewer")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#readout")).not_to_have_attribute(
        "data-voxel", ",".join(map(str, after_wheel))
    )
    assert abs(readout_voxel(page)[2] - after_wheel[2]) == 2

    # A click moves the crosshair: voxel, world position (RAS mm) and value read out.
    click_tile(page, 0, 0.3, 0.6)
    voxel = readout_voxel(page)
    data = np.asanyarray(nib.load(volume).dataobj)
    text = page.inner_text("#readout")
    assert f"voxel {voxel[0]}, {voxel[1]}, {voxel[2]}" in text and "mm (RAS)" in text
    value = float(text.split("value ")[1].split(" ")[0])
    assert value == pytest.approx(float(data[tuple(voxel)]), abs=1e-2)
    world = nib.load(volume).affine @ [*voxel, 1]
    shown = [float(v) for v in text.split(" · ")[1].split(" mm")[0].split(", ")]
    assert np.allclose(shown, world[:3], atol=0.6)

    # Zoom in and back: the tile's picture changes, then returns.
    page.select_option("#window-preset", "auto")
    plain = crop(canvas_picture(page, "volume-mri-before-zoom"), axial)
    page.click("#zoom-in")
    page.click("#zoom-in")
    zoomed = crop(canvas_picture(page, "volume-mri-zoomed"), axial)
    assert np.abs(zoomed - plain).mean() > 5
    centre = (origin["x"] + axial[0] + axial[2] / 2, origin["y"] + axial[1] + axial[3] / 2)
    page.mouse.move(*centre)
    page.mouse.down(button="middle")
    page.mouse.move(centre[0] + 60, centre[1] + 30, steps=5)
    page.mouse.up(button="middle")
    panned = crop(canvas_picture(page, "volume-mri-zoomed-panned"), axial)
    assert np.abs(panned - zoomed).mean() > 5
    page.click("#zoom-reset")
    assert np.abs(crop(canvas_picture(page, "volume-mri-zoom-reset"), axial) - plain).mean() < 1

    # Labels: a legend row hides its label, opacity fades them all.
    page.click('#legend tr.legend-row[data-label="lesion"]')
    hidden = crop(canvas_picture(page, "volume-mri-lesion-hidden"), axial)
    assert np.abs(hidden - plain).mean() > 1
    page.click('#legend tr.legend-row[data-label="lesion"]')
    assert np.abs(crop(canvas_picture(page, "volume-mri-lesion-shown"), axial) - plain).mean() < 1
    page.fill("#opacity", "90")
    assert np.abs(crop(canvas_picture(page, "volume-mri-opacity-90"), axial) - plain).mean() > 1

    # Single planes.
    for name in ("axial", "coronal", "sagittal"):
        page.select_option("#view", name)
        only = tiles(page)
        assert list(only) == [{"axial": 0, "coronal": 1, "sagittal": 2}[name]]
        assert crop(canvas_picture(page, f"volume-mri-{name}"), only[list(only)[0]]).std() > 10
    page.select_option("#view", "multiplanar")


def test_refine_a_slice_by_clicking_in_the_viewer(volume_page, shared_data, tmp_path):
    page = volume_page
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz", first=70, count=6)
    segment_in_page(page, volume, ["polyp", "lung"])
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    page.fill("#opacity", "100")
    posts: list[tuple[str, dict]] = []
    page.on(
        "request", lambda r: posts.append((r.url, r.post_data_json)) if r.method == "POST" else None
    )
    page.check("#refine-mode")
    page.select_option("#refine-label", "lung")
    click_tile(page, 1, 0.5, 0.5)  # coronal: not the model's plane
    expect(page.locator("#refine-status")).to_contain_text("refine on the axial plane")
    assert posts == []
    # Where two spots are: navigation clicks read out their voxels (axial: k stays).
    page.uncheck("#refine-mode")
    spots = [(0.4, 0.45), (0.6, 0.55)]
    voxels = []
    for spot in spots:
        click_tile(page, 0, *spot)
        voxels.append(readout_voxel(page))
    slice_before = voxels[0][2]
    before = crop(canvas_picture(page, "volume-refine-before"), tiles(page)[0])
    counts_before = page.locator("#legend tr.legend-row td.num:nth-child(3)").all_inner_texts()
    page.check("#refine-mode")
    status = page.locator("#refine-status")
    click_tile(page, 0, *spots[0])
    expect(status).to_contain_text("1 point(s)")
    click_tile(page, 0, *spots[1], shift=True)
    expect(status).to_contain_text("2 point(s)")
    assert [url.rsplit("/", 2)[-2:] for url, _ in posts] == [["v1", "refine"]] * 2
    # Each click posted the voxel under it: slice k, point (x, y) = (j, i), +/-.
    (i0, j0, k0), (i1, j1, _) = voxels
    assert posts[0][1]["slice"] == posts[1][1]["slice"] == k0
    assert posts[1][1]["points"] == [[j0, i0, 1], [j1, i1, 0]]
    assert readout_voxel(page)[2] == slice_before  # refine clicks leave the crosshair
    refined = crop(canvas_picture(page, "volume-refine-two-points"), tiles(page)[0])
    assert np.abs(refined - before).mean() > 1  # the slice's labels changed (and the marks)
    counts = page.locator("#legend tr.legend-row td.num:nth-child(3)").all_inner_texts()
    assert counts[1] != counts_before[1] and counts[0] == counts_before[0]

    # The label map download carries the edit: its slice equals what the server now holds.
    edited = nib.load(download(page, "#download-labels", tmp_path)).get_fdata()
    shown = page.evaluate(
        """async () => {
          const { view } = await import('/static/volume.js');
          return Array.from(view.nv.volumes[1].img);
        }"""
    )
    # The viewer patched the refined slice in place: it holds what the server now has.
    np.testing.assert_array_equal(np.asarray(shown), edited.ravel(order="F"))
    page.click("#refine-undo")
    expect(status).to_contain_text("1 point(s)")
    page.click("#refine-undo")
    page.wait_for_selector("#refine-undo[disabled]", state="attached")
    page.uncheck("#refine-mode")
    restored = crop(canvas_picture(page, "volume-refine-undone"), tiles(page)[0])
    assert np.abs(restored - before).mean() < 0.5
    original = nib.load(download(page, "#download-labels", tmp_path)).get_fdata()
    changed = np.nonzero((edited != original).any(axis=(0, 1)))[0].tolist()
    assert changed == [slice_before]  # only the clicked slice was edited


def test_dicom_series_in_the_viewer_and_its_dicom_seg(volume_page, tmp_path):
    page = volume_page
    paths = write_series(tmp_path / "series", "1.2.826.0.1.81", 6)
    segment_in_page(page, paths, ["polyp", "lung"])
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    assert page.inner_text("#file-name") == "6 files"
    boxes = tiles(page)
    picture = canvas_picture(page, "volume-dicom-series")
    for plane, box in boxes.items():
        assert crop(picture, box).std() > 10, f"plane {plane} is blank"
    screenshot(page, "volume-dicom-page")
    # The viewer reads out the series' own values (HU after rescale) at the clicked voxel.
    click_tile(page, 0, 0.35, 0.4)
    voxel = readout_voxel(page)
    values, _ = read_image(tmp_path / "series")
    shown = float(page.inner_text("#readout").split("value ")[1].split(" ")[0])
    assert shown == pytest.approx(float(values[(0, *voxel)]), abs=1e-2)
    assert page.is_visible("#download-seg")
    seg_path = download(page, "#download-seg", tmp_path)
    seg = hd.seg.segread(seg_path)
    names = [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers]
    assert names == ["polyp", "lung"]
    dataset = pydicom.dcmread(seg_path)
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.81"
    assert int(dataset.NumberOfFrames) == len(dataset.PerFrameFunctionalGroupsSequence) > 0
    referenced = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in dataset.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= {pydicom.dcmread(p).SOPInstanceUID for p in paths}


def rotated_x(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


@pytest.mark.parametrize(
    ("layout", "plane"),
    [("sagittal-stored", "sagittal"), ("oblique", "axial")],
)
def test_refine_clicks_follow_the_affine(volume_page, tmp_path, layout, plane):
    """A volume whose third voxel axis runs along world x (slices are sagittal), and one
    tilted 20 degrees about x: the viewer finds the model's plane from the affine, starts on
    the server's best slice, and a refine click posts the voxel the crosshair reads out there
    (whose value is the file's at that voxel)."""
    page = volume_page
    path = phantom(tmp_path / "base.nii.gz", flip_x=False)
    base = nib.load(path)
    data = np.asanyarray(base.dataobj)
    if layout == "sagittal-stored":  # voxel (a, b, c) = phantom (c, b, a): c runs along x
        data = np.ascontiguousarray(data.transpose(2, 1, 0))
        affine = base.affine[:, [2, 1, 0, 3]]
    else:
        affine = rotated_x(20) @ base.affine
    volume = tmp_path / f"{layout}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), volume)
    segment_in_page(page, volume, ["lung"])
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    assert page.inner_text("#model-plane") == plane
    code = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    best = page.evaluate("async () => (await import('/static/state.js')).state.result.best_slice")
    assert readout_voxel(page)[2] == best
    click_tile(page, code, 0.45, 0.55)
    i, j, k = readout_voxel(page)
    shown = float(page.inner_text("#readout").split("value ")[1].split(" ")[0])
    near = data[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2]
    if layout == "oblique":  # NiiVue samples the voxel whose centre is nearest: +-1 at edges
        assert np.isclose(near, shown, atol=1e-3).any()
    else:
        assert shown == pytest.approx(float(data[i, j, k]), abs=1e-3)
    with page.expect_request("**/v1/refine") as request:
        page.check("#refine-mode")
        click_tile(page, code, 0.45, 0.55)
    body = request.value.post_data_json
    assert body["slice"] == k and body["points"] == [[j, i, 1]]
    expect(page.locator("#refine-status")).to_contain_text("1 point(s)")
    screenshot(page, f"volume-{layout}-refined", "#gl")


def test_volume_then_image_then_volume(volume_page, shared_data, tmp_path):
    """Switching between volumes and 2D images: each result shows in its own view, nothing of
    the previous one stays."""
    page = volume_page
    segment_in_page(page, phantom(tmp_path / "a.nii.gz", flip_x=False), ["lung"])
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    segment_in_page(page, kvasir_image(shared_data), ["polyp"])
    assert page.is_visible("#canvas") and not page.is_visible("#volume-viewer")
    assert not page.is_visible("#volume-tools") and not page.is_visible("#readout-bar")
    assert not page.is_visible("#slice-control")
    paths = write_series(tmp_path / "series", "1.2.826.0.1.83", 4)
    segment_in_page(page, paths, ["lung"])
    page.wait_for_selector('#volume-viewer[data-state="ready"]')
    assert not page.is_visible("#canvas") and page.is_visible("#volume-tools")
    assert page.inner_text("#volume-slice").endswith("/ 4")
    names = page.locator("#legend tr.legend-row").evaluate_all(
        "rows => rows.map(r => r.dataset.label)"
    )
    assert names == ["lung"]
