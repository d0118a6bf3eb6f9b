"""Faults of S3 reads, on moto's real S3 server on loopback.

A fault-injecting proxy (tests/remote_servers.FaultProxy) in front of moto fails the first
requests (503 SlowDown, or a TCP reset): the run retries and gives the same COGs as the
stacked local file. moto with authentication on answers 403 itself (wrong secret, unknown
key id, a user without permission), and 404 for a missing key: each is one line naming
the URL and the status, the CLI exits non-zero and nothing is written. The credentials
never appear in an error or a manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("moto")
pytest.importorskip("boto3")

from remote_servers import FaultProxy, S3Server  # noqa: E402
from test_remote_sources import BANDS, make_item, same_products  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from geoseg.synthetic import synthesize

    d = tmp_path_factory.mktemp("s3scene")
    return Path(synthesize(d / "scene.tif", (128, 160), seed=7, block=128).path)


@pytest.fixture(scope="module")
def item_files(tmp_path_factory, scene) -> dict[str, Path]:
    """The scene as four single-band COGs plus an Item (relative hrefs), and the stacked file."""
    d = tmp_path_factory.mktemp("s3item")
    make_item(d, scene)
    return {f"{k}.tif": d / f"{k}.tif" for k in BANDS.values()} | {"item.json": d / "item.json", "scene.tif": scene}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scene) -> Path:
    from geoseg import run_scene

    out = tmp_path_factory.mktemp("s3ref")
    run_scene(scene, out, quiet=True, vectorize=False, threads=2)
    return out


def _upload(s3: S3Server, item_files: dict[str, Path]) -> str:
    """The files under a fresh prefix (GDAL caches what it read per URL, across tests)."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    s3.upload("faults", {f"{prefix}/{k}": p for k, p in item_files.items()})
    return f"s3://faults/{prefix}"


def _secrets(s3: S3Server) -> list[str]:
    return [v for pair in s3.keys.values() for v in pair]


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_transient_s3_failures_are_retried(item_files, reference, tmp_path, monkeypatch, mode):
    from geoseg import run_scene

    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")  # GDAL's retry of one request (default 0.5 s, doubling)
    with S3Server(auth=True) as s3, FaultProxy(s3.endpoint, fail_mode=mode) as proxy:
        base = _upload(s3, item_files)
        monkeypatch.setenv("AWS_S3_ENDPOINT", proxy.endpoint)  # GDAL talks to moto through the proxy
        proxy.fail_next = 3
        m = run_scene(f"{base}/item.json", tmp_path, quiet=True, vectorize=False, threads=2)
        assert proxy.failures == 3 and len(proxy.requests) > 3
        same_products(reference, tmp_path, "scene", "scene-1")
        recorded = json.dumps(m) + (tmp_path / "scene-1.run.json").read_text()
        assert m["input"]["path"] == f"{base}/item.json"
        assert not [s for s in _secrets(s3) if s in recorded]


def test_retries_are_bounded(item_files, tmp_path, monkeypatch):
    """A server that keeps failing: a one-line error after a bounded number of requests."""
    from geoseg import run_scene
    from geoseg.errors import RasterReadError
    from geoseg.io import remote

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setattr(remote, "RETRY_DELAY_S", 0.05)
    with S3Server() as s3, FaultProxy(s3.endpoint) as proxy:
        base = _upload(s3, item_files)
        monkeypatch.setenv("AWS_S3_ENDPOINT", proxy.endpoint)
        proxy.fail_next = 10**6
        t0 = time.monotonic()
        with pytest.raises(RasterReadError) as exc:
            run_scene(f"{base}/scene.tif", tmp_path / "out", quiet=True, vectorize=False)
        seconds = time.monotonic() - t0
    msg = str(exc.value)
    assert "\n" not in msg and f"{base}/scene.tif (HTTP 503" in msg, msg
    # OPEN_ATTEMPTS whole opens of at most 1 + GDAL_HTTP_MAX_RETRY requests each (HEAD and GET)
    assert 3 <= len(proxy.requests) <= remote.OPEN_ATTEMPTS * 3 * 2, proxy.requests
    assert seconds < 20
    assert _nothing_written(tmp_path / "out")


@pytest.mark.parametrize("who", ["wrong secret", "unknown key", "no permission"])
def test_s3_403_is_one_line_without_credentials(item_files, tmp_path, monkeypatch, who):
    from geoseg import run_scene
    from geoseg.errors import RasterReadError
    from geoseg.io.remote import http_metadata

    with S3Server(auth=True) as s3:
        base = _upload(s3, item_files)
        assert "etag" in http_metadata(f"{base}/B02.tif")  # the reader's keys are accepted
        key_id, secret = {"wrong secret": (s3.keys["reader"][0], "not-the-secret"),
                          "unknown key": ("AKIAGEOSEGUNKNOWN000", "unknown-secret"),
                          "no permission": s3.keys["nobody"]}[who]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        for source in (f"{base}/item.json", f"{base}/scene.tif"):
            out = tmp_path / source.rsplit("/", 1)[1]
            with pytest.raises(RasterReadError) as exc:
                run_scene(source, out, quiet=True, vectorize=False)
            msg = str(exc.value)
            assert "\n" not in msg and f"{source} (HTTP 403" in msg, msg
            assert "credentials" in msg  # the hint
            assert not [s for s in (*_secrets(s3), key_id, secret) if s in msg], msg
            assert _nothing_written(out)


def _cli(source: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", "run", source, "-o", str(out), "--no-vectorize", "-q"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=300, check=False)


def test_cli_s3_404_and_403(item_files, tmp_path):
    """Via the CLI: an Item whose asset key is missing (404), wrong credentials (403)."""
    with S3Server(auth=True) as s3:
        base = _upload(s3, item_files)
        bucket, prefix = base[len("s3://"):].split("/", 1)
        s3.client.delete_object(Bucket=bucket, Key=f"{prefix}/B04.tif")
        r = _cli(f"{base}/item.json", tmp_path / "a")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert f"{base}/B04.tif (HTTP 404" in lines[0], lines[0]
        assert _nothing_written(tmp_path / "a")
        os.environ["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"  # restored when the server closes
        r = _cli(f"{base}/scene.tif", tmp_path / "b")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert f"{base}/scene.tif (HTTP 403" in lines[0], lines[0]
        assert not [s for s in (*_secrets(s3), "not-the-secret") if s in r.stderr + r.stdout]
        assert _nothing_written(tmp_path / "b")
