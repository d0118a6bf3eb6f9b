"""The batch report page (report.html), opened in a real browser: Debian's Chromium, headless,
driven by playwright (skipped where either is absent)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import write_raster
from geoseg.batch.runner import run_batch
from geoseg.synthetic import synthesize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """A catalog of three scenes at different places: ``a`` run by a first batch (then
    skipped), ``b`` done, ``bad`` failed (two bands for a four-band model); returns the
    folder of report.json and report.html."""
    d = tmp_path_factory.mktemp("report")
    (d / "data").mkdir()
    synthesize(d / "data" / "a.tif", (160, 200), seed=1, origin=(500000.0, 5500000.0))
    synthesize(d / "data" / "b.tif", (192, 128), seed=2, origin=(503000.0, 5498500.0))
    write_raster(d / "data" / "bad.tif", np.ones((2, 64, 64), np.uint16),
                 transform=__import__("affine").Affine(10.0, 0.0, 501000.0, 0.0, -10.0, 5496500.0))
    (d / "catalog.yaml").write_text(textwrap.dedent("""
        defaults:
          model: spectral
          tile_size: 128
          out: out/{id}
        scenes:
          - path: data/a.tif
          - path: data/b.tif
          - path: data/bad.tif
        """).lstrip())
    run_batch(d / "catalog.yaml", only=["a"], quiet=True)
    report = run_batch(d / "catalog.yaml", quiet=True, report=d / "runs" / "report.json")
    assert {s.id: s.status for s in report.scenes} == {"a": "skipped", "b": "done", "bad": "failed"}
    return d / "runs"


def test_batch_writes_a_self_contained_page(batch) -> None:
    page = (batch / "report.html").read_text()
    report = json.loads((batch / "report.json").read_text())
    assert page.startswith("<!DOCTYPE html>")
    # nothing fetched from elsewhere: every image inline, no script, no stylesheet link
    assert "<script" not in page and "<link" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert page.count('<img src="data:image/png;base64,') == 2  # the two scenes with outputs
    bad = next(s for s in report["scenes"] if s["id"] == "bad")
    assert bad["error"]["message"].split(":")[0] in page


def test_report_command_rebuilds_the_page_from_json_or_the_outputs_catalog(batch, tmp_path) -> None:
    first = (batch / "report.html").read_bytes()
    (batch / "report.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "geoseg", "report", str(batch / "report.json")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (batch / "report.html").read_bytes() == first
    proc = subprocess.run([sys.executable, "-m", "geoseg", "report", str(batch.parent / "out"), "-o",
                           str(tmp_path / "from_catalog.html")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "from_catalog.html").read_text()
    assert page.count("<polygon") == 2 and "failed" not in page  # the catalog knows the two scenes with outputs
    proc = subprocess.run([sys.executable, "-m", "geoseg", "report", str(tmp_path / "nothing.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_in_a_real_browser(batch, tmp_path) -> None:
    """Copied to another folder (it must not need its neighbours), opened from file:// in
    headless Chromium: every image decodes, the failed scene's message shows, the map has a
    shape per scene; a screenshot is left in the test's folder."""
    sync_api = pytest.importorskip("playwright.sync_api")
    elsewhere = tmp_path / "moved" / "report.html"
    elsewhere.parent.mkdir()
    shutil.copy(batch / "report.html", elsewhere)
    report = json.loads((batch / "report.json").read_text())
    message = next(s for s in report["scenes"] if s["id"] == "bad")["error"]["message"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(elsewhere.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert len(images) == 2 and all(ok and w > 0 and h > 0 for ok, w, h in images), images
            error = page.locator("#scene-bad .error")
            assert error.is_visible() and message in error.inner_text()
            shapes = page.locator("svg#footprints polygon")
            assert shapes.count() == 3
            assert sorted(shapes.nth(i).get_attribute("data-scene") for i in range(3)) == ["a", "b", "bad"]
            assert page.locator('svg#footprints polygon[data-scene="bad"]').get_attribute("fill") == "#c62828"
            box = page.locator("svg#footprints").bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100
            assert all(u.startswith(("file://", "data:")) for u in requests), requests  # nothing from the network
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_damaged_manifest_still_gives_a_page(batch, tmp_path) -> None:
    from geoseg.batch.report_html import write_report_html

    report = json.loads((batch / "report.json").read_text())
    broken = tmp_path / "broken.run.json"
    broken.write_text(json.dumps({"outputs": {"thumb.png": {}}, "classes": "nonsense"}))
    report["scenes"][1]["manifest"] = str(broken)
    page = write_report_html(report, tmp_path / "report.html").read_text()
    assert page.count('class="card"') == 3 and "b</h3>" in page
