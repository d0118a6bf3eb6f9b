"""Outputs to an object store (geoseg.io.store), on moto's real S3 server on loopback.

``geoseg run -o s3://...`` gives the bytes of a local run; a batch with an ``s3://`` out
template writes to the bucket (not to a local folder named ``s3:``) and its rerun skips
every scene after one listing and the manifests' GETs, no pixel object read; a run killed
mid-upload leaves no manifest, and the next run leaves nothing but the committed outputs;
403, rejected credentials, a full scratch disk and unknown schemes are one line each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto")
pytest.importorskip("boto3")
pytest.importorskip("obstore")

from remote_servers import FaultProxy, S3Server  # noqa: E402
from test_faults import small_disk  # noqa: E402, F401 - the fixture

BUCKET = "geoseg-out"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("storescene")
    return Path(synthesize(d / "scene.tif", (256, 320), seed=3, block=128).path)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, scene) -> Path:
    """The reference: the same run to a local directory."""
    from geoseg import run_scene

    out = tmp_path_factory.mktemp("storelocal")
    run_scene(scene, out, quiet=True, threads=2)
    return out


@pytest.fixture
def s3(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSEG_SCRATCH", str(tmp_path / "scratch"))
    with S3Server() as server:
        server.client.create_bucket(Bucket=BUCKET)
        yield server


def _geoseg(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, check=False)


def _keys(s3: S3Server, prefix: str) -> dict[str, int]:
    out = {}
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])})
    return out


def _download(s3: S3Server, prefix: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in _keys(s3, prefix):
        s3.client.download_file(BUCKET, prefix + name, str(dest / name))
    return dest


def _scratch_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_run_to_s3_gives_the_bytes_of_a_local_run(s3, scene, local_run, tmp_path):
    r = _geoseg("run", scene, "-o", f"s3://{BUCKET}/out/x", "--threads", "2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = _download(s3, "out/x/", tmp_path / "got")
    want = sorted(p.name for p in local_run.iterdir())
    assert sorted(p.name for p in got.iterdir()) == want
    for name in want:
        if name.endswith((".tif", ".aux.xml", ".qml")):
            assert (got / name).read_bytes() == (local_run / name).read_bytes(), name
    import pyogrio

    a = pyogrio.read_dataframe(got / "scene.gpkg", layer="classes")
    b = pyogrio.read_dataframe(local_run / "scene.gpkg", layer="classes")
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry")) and a.geometry.equals(b.geometry)
    manifest = json.loads((got / "scene.run.json").read_text())
    heads = {n: s3.client.head_object(Bucket=BUCKET, Key=f"out/x/{n}") for n in want if n != "scene.run.json"}
    for entry in manifest["outputs"].values():  # the fingerprints a rerun checks without a download
        assert entry["etag"] == heads[entry["path"]]["ETag"] and entry["bytes"] == heads[entry["path"]]["ContentLength"]
    assert not (tmp_path / "s3:").exists()
    assert not _scratch_files(tmp_path / "scratch")  # temporaries, stripes and journal all gone


def _catalog(path: Path, scenes: list[Path], out: str) -> Path:
    lines = ["version: 1", "defaults:", "  vectorize: false", f'  out: "{out}"', "scenes:"]
    lines += [f"  - path: {p}\n    id: {p.stem}" for p in scenes]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_s3_out_template_writes_the_bucket_and_reruns_without_reading_pixels(s3, scene, tmp_path, monkeypatch):
    """Regression: ``out: "s3://bucket/out/{id}"`` wrote everything to a local folder named ``s3:``."""
    from geoseg.batch.runner import run_batch

    import shutil

    scenes = [scene, tmp_path / "other.tif"]
    shutil.copy(scene, scenes[1])
    cat = _catalog(tmp_path / "catalog.yaml", scenes, f"s3://{BUCKET}/batch/{{id}}")
    monkeypatch.chdir(tmp_path)
    first = run_batch(cat, quiet=True)
    assert first.exit_code == 0, first.to_dict()
    assert [s.status for s in first.scenes] == ["done", "done"]
    assert not list(tmp_path.glob("s3*")) and not (cat.parent / "s3:").exists()
    for p in scenes:
        keys = _keys(s3, f"batch/{p.stem}/")
        manifest = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"batch/{p.stem}/{p.stem}.run.json")["Body"].read())
        assert set(keys) == {e["path"] for e in manifest["outputs"].values()} | {f"{p.stem}.run.json"}
    assert first.scenes[0].manifest == f"s3://{BUCKET}/batch/scene/scene.run.json"

    with FaultProxy(s3.endpoint) as proxy:  # counts every request the rerun makes
        monkeypatch.setenv("AWS_S3_ENDPOINT", proxy.endpoint)
        second = run_batch(cat, quiet=True)
    monkeypatch.setenv("AWS_S3_ENDPOINT", s3.endpoint)
    assert [s.status for s in second.scenes] == ["skipped", "skipped"], second.to_dict()
    gets = [path for method, path in proxy.requests if method == "GET"]
    assert gets and all(g.endswith(".run.json") or g.rstrip("/") == f"/{BUCKET}" for g in gets), gets
    assert not [r for r in proxy.requests if r[0] in ("PUT", "DELETE", "POST")]

    # an output changed in the bucket (another size and ETag): that scene reruns
    s3.client.put_object(Bucket=BUCKET, Key="batch/other/other.confidence.tif", Body=b"not a COG")
    third = run_batch(cat, quiet=True)
    assert [s.status for s in third.scenes] == ["skipped", "done"]
    assert "confidence.tif" in third.scenes[1].reason


def test_run_killed_mid_upload_leaves_nothing_done(s3, scene, tmp_path):
    """SIGKILL while the confidence COG is being uploaded (the proxy holds that PUT): the
    class map is at its key but there is no manifest; a batch sees no complete run, and
    the next run commits and leaves no partial key and no scratch file."""
    from geoseg.batch.catalog import load_catalog, resolve
    from geoseg.batch.runner import check_scene

    with FaultProxy(s3.endpoint) as proxy:
        proxy.hold_put = ".confidence.tif"
        env = {**os.environ, "AWS_S3_ENDPOINT": proxy.endpoint}
        proc = subprocess.Popen([sys.executable, "-m", "geoseg", "run", str(scene), "-o", f"s3://{BUCKET}/k/scene",
                                 "--threads", "2", "--quiet"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proxy.held.wait(120), proc.communicate(timeout=5)[1]
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proxy.release.set()
    keys = _keys(s3, "k/scene/")
    assert "scene.classes.tif" in keys and "scene.run.json" not in keys
    cat = _catalog(tmp_path / "catalog.yaml", [scene], f"s3://{BUCKET}/k/{{id}}")
    assert check_scene(resolve(load_catalog(cat))[0], "any").reason == "no complete run yet"

    r = _geoseg("run", scene, "-o", f"s3://{BUCKET}/k/scene", "--threads", "2", "--quiet", "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    keys = _keys(s3, "k/scene/")
    manifest = json.loads(s3.client.get_object(Bucket=BUCKET, Key="k/scene/scene.run.json")["Body"].read())
    assert set(keys) == {e["path"] for e in manifest["outputs"].values()} | {"scene.run.json"}
    assert not s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    assert not _scratch_files(tmp_path / "scratch")


@pytest.mark.parametrize("who", ["nobody", "unknown"])
def test_403_on_the_bucket_is_one_line_without_credentials(tmp_path, scene, monkeypatch, who):
    monkeypatch.setenv("GEOSEG_SCRATCH", str(tmp_path / "scratch"))
    with S3Server(auth=True) as s3:
        s3.client.create_bucket(Bucket=BUCKET)
        key, secret = s3.keys["nobody"] if who == "nobody" else ("AKIAUNKNOWNKEY000000", "not-a-secret-at-all")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        r = _geoseg("run", scene, "-o", f"s3://{BUCKET}/denied/x", "--quiet", cwd=tmp_path, env=env)
        secrets = [v for pair in s3.keys.values() for v in pair] + [key, secret]
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"s3://{BUCKET}/denied/x" in lines[0]
    assert ("access denied" if who == "nobody" else "credentials were rejected") in lines[0]
    assert not any(s in r.stderr + r.stdout for s in secrets)
    assert not (tmp_path / "s3:").exists()


def test_full_scratch_disk_names_the_destination(s3, scene, small_disk, monkeypatch):  # noqa: F811
    disk = small_disk(64)  # KiB: the stripes of a 256x320 scene do not fit
    r = subprocess.run([sys.executable, "-m", "geoseg", "run", str(scene), "-o", f"s3://{BUCKET}/full/x", "--quiet"],
                       capture_output=True, text=True, env={**os.environ, "GEOSEG_SCRATCH": str(disk)}, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "no space left on device" in lines[0] and f"s3://{BUCKET}/full/x" in lines[0]
    assert not _keys(s3, "full/")


@pytest.mark.parametrize("dest", ["gs://bucket/out", "s3:/typo/out"])
def test_unknown_scheme_is_one_line_and_no_local_folder(tmp_path, scene, dest):
    r = _geoseg("run", scene, "-o", dest, "--quiet", cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and dest in lines[0], r.stderr
    assert not [p for p in tmp_path.iterdir()]  # nothing created, no folder named "gs:" or "s3:"
    r = _geoseg("vectorize", scene, f"{dest}/x.gpkg", cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_catalog_with_an_unknown_scheme_is_a_catalog_error(tmp_path, scene):
    from geoseg.batch.catalog import load_catalog, resolve
    from geoseg.errors import CatalogError

    cat = _catalog(tmp_path / "catalog.yaml", [scene], "gs://bucket/out/{id}")
    with pytest.raises(CatalogError, match="gs://"):
        resolve(load_catalog(cat))
    assert not (tmp_path / "gs:").exists()


def test_vectorize_and_to_cog_to_s3(s3, local_run, tmp_path):
    pytest.importorskip("rioxarray")
    import rioxarray  # noqa: F401
    import xarray as xr

    import geoseg

    r = _geoseg("vectorize", local_run / "scene.classes.tif", f"s3://{BUCKET}/v/scene.gpkg", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(_keys(s3, "v/")) == {"scene.gpkg"}
    classes = xr.open_dataarray(local_run / "scene.classes.tif", engine="rasterio").squeeze(drop=True)
    got = geoseg.to_cog(classes.astype("uint8"), f"s3://{BUCKET}/cog/c.tif")
    assert got == {"classes": f"s3://{BUCKET}/cog/c.tif"}
    assert set(_keys(s3, "cog/")) == {"c.tif"}


def test_tile_resume_with_a_store_destination(s3, small_unet, tmp_path):
    """The journal and the stripes live on the local scratch disk: SIGKILL mid-inference,
    then ``--resume`` to the same s3:// prefix redoes only the missing tiles, same bytes."""
    import time

    from geoseg.io.store import OutputStore, journal_path
    from geoseg.synthetic import synthesize

    scene = Path(synthesize(tmp_path / "big.tif", 512, seed=11).path)
    run = ("-m", small_unet, "--tile-size", "64", "--threads", "2", "--quiet", "--json")
    env = {**os.environ, "GEOSEG_CHECKPOINT_SECONDS": "0"}
    ref = _geoseg("run", scene, "-o", tmp_path / "ref", *run, env=env)
    assert ref.returncode == 0, ref.stderr
    dest = f"s3://{BUCKET}/r/big"
    journal = journal_path(OutputStore(dest).scratch, "big")
    p = subprocess.Popen([sys.executable, "-m", "geoseg", "run", str(scene), "-o", dest, *run], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not journal.exists() or len(journal.read_text().splitlines()) < 9:  # the key and 8 tiles
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert "big.run.json" not in _keys(s3, "r/big/")
    r = _geoseg("run", scene, "-o", dest, *run, "--resume", "--overwrite", env=env)
    assert r.returncode == 0, r.stderr
    manifest = json.loads(r.stdout)
    assert manifest["execution"]["tiles_resumed"] >= 8
    got = _download(s3, "r/big/", tmp_path / "got")
    for kind in ("classes.tif", "confidence.tif", "mask.tif", "classes.tif.aux.xml", "classes.qml"):
        assert (got / f"big.{kind}").read_bytes() == (tmp_path / "ref" / f"big.{kind}").read_bytes(), kind
    assert not _scratch_files(tmp_path / "scratch")


def test_names_lists_a_kind_with_a_mask_head_wildcard(tmp_path) -> None:
    """The batch finds stale per-head quicklooks (``<stem>.mask-<head>.png``) by glob; a stem
    with glob characters matches only itself."""
    from geoseg.io.store import OutputStore, kind_glob

    for name in ("s[1].mask-water.png", "s[1].mask-roads.png", "s1.mask-water.png", "s[1].classes.png"):
        (tmp_path / name).write_bytes(b"png")
    store = OutputStore(tmp_path)
    assert store.names(kind_glob("s[1]", "mask-*.png")) == ["s[1].mask-roads.png", "s[1].mask-water.png"]
    assert store.names(kind_glob("s[1]", "classes.png")) == ["s[1].classes.png"]
