"""Batches over remote inputs: a STAC API (`rustac serve`) behind a `stac_search:` entry,
STAC Items on moto's S3 server, skip-if-done without reading pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from remote_servers import RangeServer, S3Server, StacApiServer
from test_remote_sources import BANDS, make_item

pytestmark = pytest.mark.skipif(shutil.which("rustac") is None, reason="rustac (pip install rustac) not installed")


def _scene(d: Path, seed: int) -> Path:
    from geoseg.synthetic import synthesize

    return Path(synthesize(d / f"scene{seed}.tif", (128, 160), seed=seed, block=128).path)


def _absolute(item_path: Path, base_url: str, prefix: str, item_id: str, x: float) -> dict:
    item = json.loads(item_path.read_text())
    item["id"], item["collection"] = item_id, "s2"
    item["geometry"] = {"type": "Polygon", "coordinates": [[[x, 50], [x + 0.1, 50], [x + 0.1, 50.1], [x, 50.1], [x, 50]]]}
    item["bbox"] = [x, 50, x + 0.1, 50.1]
    for a in item["assets"].values():
        a["href"] = f"{base_url}/{prefix}/{a['href'][2:]}"
    return item


def _catalog(path: Path, url: str, out: Path) -> Path:
    path.write_text(
        f"version: 1\ndefaults:\n  vectorize: false\n  out: {out}/{{id}}\n"
        f"scenes:\n  - stac_search:\n      url: {url}\n      collections: [s2]\n"
        f"      bbox: [9, 49, 12, 51]\n      datetime: 2026-01-01T00:00:00Z/2026-12-31T00:00:00Z\n      max_items: 10\n"
    )
    return path


def test_stac_search_runs_only_new_items(tmp_path):
    from geoseg.batch.runner import run_batch

    root = tmp_path / "served"
    items = []
    for i in range(3):
        d = root / f"s{i}"
        d.mkdir(parents=True)
        make_item(d, _scene(tmp_path, i))
    with RangeServer(root) as http:
        items = [_absolute(root / f"s{i}" / "item.json", http.url, f"s{i}", f"scene-{i}", 10 + i * 0.2) for i in range(3)]
        feed = tmp_path / "items.json"
        feed.write_text(json.dumps({"type": "FeatureCollection", "features": items[:2]}))
        cat = _catalog(tmp_path / "catalog.yaml", "URL", tmp_path / "out")
        with StacApiServer(feed) as api:
            cat.write_text(cat.read_text().replace("URL", api.url))
            first = run_batch(cat, quiet=True)
        assert {s.id: s.status for s in first.scenes} == {"scene-0": "done", "scene-1": "done"}
        for i in range(2):
            m = json.loads((tmp_path / "out" / f"scene-{i}" / f"scene-{i}.run.json").read_text())
            assert m["input"]["fingerprint"]["kind"] == "stac-item"
        # the nightly job: one Item more in the API
        feed.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        http.reset()
        with StacApiServer(feed) as api:
            cat.write_text(cat.read_text().replace(cat.read_text().split("url: ")[1].split("\n")[0], api.url))
            second = run_batch(cat, quiet=True)
        assert {s.id: s.status for s in second.scenes} == {"scene-0": "skipped", "scene-1": "skipped", "scene-2": "done"}
        # the finished scenes were checked with HEAD requests only: no byte of their pixels
        assert not [r for r in http.gets(".tif") if not r[1].startswith("/s2/")]
        assert [r for r in http.gets(".tif") if r[1].startswith("/s2/")]


def test_url_rerun_fetches_no_pixels_and_sees_changes(tmp_path):
    from geoseg.batch.runner import run_batch

    d = tmp_path / "served"
    d.mkdir()
    scene = _scene(tmp_path, 5)
    shutil.copy(scene, d / "scene.tif")
    with RangeServer(d) as http:
        cat = tmp_path / "catalog.yaml"
        cat.write_text(f"version: 1\ndefaults:\n  vectorize: false\n  out: {tmp_path}/out/{{id}}\n"
                       f"scenes:\n  - path: {http.url}/scene.tif\n")
        assert run_batch(cat, quiet=True).scenes[0].status == "done"
        http.reset()
        assert run_batch(cat, quiet=True).scenes[0].status == "skipped"
        assert http.gets() == [] and http.bytes_sent == 0  # HEAD only
        shutil.copy(_scene(tmp_path, 6), d / "scene.tif")  # replaced in place: new ETag
        again = run_batch(cat, quiet=True).scenes[0]
        assert again.status == "done" and again.reason == "input changed"


@pytest.mark.slow
def test_s3_batch_workers_match_threads(tmp_path):
    from geoseg.batch.runner import run_batch

    files = {}
    for i in range(2):
        d = tmp_path / f"s{i}"
        d.mkdir()
        make_item(d, _scene(tmp_path, 10 + i), item_id=f"scene-{i}")
        files |= {f"s{i}/{k}.tif": d / f"{k}.tif" for k in BANDS.values()} | {f"s{i}/item.json": d / "item.json"}
    with S3Server() as s3:
        s3.upload("scenes", files)
        outs = {}
        for mode, kw in (("threads", {}), ("workers", {"workers": 2})):
            cat = tmp_path / f"{mode}.yaml"
            cat.write_text(f"version: 1\ndefaults:\n  vectorize: false\n  out: {tmp_path}/{mode}/{{id}}\nscenes:\n"
                           "  - path: s3://scenes/s0/item.json\n  - path: s3://scenes/s1/item.json\n")
            report = run_batch(cat, quiet=True, **kw)
            assert [s.status for s in report.scenes] == ["done", "done"], [s.error for s in report.scenes]
            outs[mode] = tmp_path / mode
    for i in range(2):
        for kind in ("classes.tif", "confidence.tif"):
            a = outs["threads"] / f"scene-{i}" / f"scene-{i}.{kind}"
            b = outs["workers"] / f"scene-{i}" / f"scene-{i}.{kind}"
            assert a.read_bytes() == b.read_bytes()
