"""Real servers on loopback for the remote-source tests, started and stopped by the tests.

- :class:`RangeServer`: an HTTP server (``http.server`` subclass) serving a directory with
  range requests, ETag and Last-Modified, counting requests and bytes, and able to fail the
  next N requests (503) or answer a fixed status (404/403) for a path.
- :class:`S3Server`: moto's S3 server (``moto[server]``) in a thread, with
  ``AWS_S3_ENDPOINT``/``AWS_HTTPS=NO``/``AWS_VIRTUAL_HOSTING=FALSE`` set for GDAL.
- :class:`StacApiServer`: ``rustac serve`` (a STAC API) over an ItemCollection file.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """``with RangeServer(root) as srv: srv.url + "/file.tif"``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = threading.Lock()
        self.reset()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path_only = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests.append((self.command, path_only, self.headers.get("Range")))
                    fail = server.fail_next > 0
                    server.fail_next -= fail
                    forced = server.status_for.get(path_only)
                if fail:
                    self.send_error(server.fail_status)
                    return
                if forced:
                    self.send_error(forced)
                    return
                file = Path(self.translate_path(path_only))
                if not file.is_file():
                    self.send_error(404)
                    return
                st = file.stat()
                size, start, end, status = st.st_size, 0, st.st_size - 1, 200
                rng = self.headers.get("Range")
                if rng:
                    m = _RANGE.match(rng.strip())
                    if not m or int(m.group(1)) >= size:
                        self.send_error(416)
                        return
                    start = int(m.group(1))
                    end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    status = 206
                self.send_response(status)
                with open(file, "rb") as f:
                    is_json = f.read(1) == b"{"
                self.send_header("Content-Type", "application/geo+json" if is_json else "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{st.st_mtime_ns:x}-{size:x}"')
                self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body:
                    with open(file, "rb") as f:
                        f.seek(start)
                        data = f.read(end - start + 1)
                    self.wfile.write(data)
                    with server.lock:
                        server.bytes_sent += len(data)
                        if not path_only.endswith(".json"):
                            server.raster_bytes += len(data)

        def factory(*args, **kw):
            return Handler(*args, directory=str(self.root), **kw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), factory)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.requests: list[tuple[str, str, str | None]] = []
            self.bytes_sent = 0
            self.raster_bytes = 0
            self.fail_next = 0
            self.fail_status = 503
            self.status_for: dict[str, int] = {}

    def gets(self, suffix: str = "") -> list:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith(suffix)]

    def __enter__(self) -> RangeServer:  # noqa: PYI034
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_S3_ENDPOINT",
          "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_NO_SIGN_REQUEST")


class S3Server:
    """moto's S3 server on loopback, with the GDAL/AWS environment pointing at it while open."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> S3Server:  # noqa: PYI034
        self.saved = {k: os.environ.get(k) for k in S3_ENV}
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{port}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="geoseg-test", AWS_SECRET_ACCESS_KEY="geoseg-test-secret", AWS_DEFAULT_REGION="us-east-1",
            AWS_S3_ENDPOINT=self.endpoint, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE",
        )
        import boto3

        self.client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1")
        return self

    def upload(self, bucket: str, files: dict[str, Path]) -> None:
        try:
            self.client.create_bucket(Bucket=bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        for key, path in files.items():
            self.client.upload_file(str(path), bucket, key)

    def __exit__(self, *exc) -> None:
        self.server.stop()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StacApiServer:
    """``rustac serve ITEMS.json`` on loopback (in-memory backend); restart to add Items."""

    def __init__(self, items_file: Path) -> None:
        self.items_file = Path(items_file)
        self.exe = shutil.which("rustac")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [self.exe, "serve", str(self.items_file), "--addr", f"127.0.0.1:{port}", "--create-collections"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("rustac serve did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> StacApiServer:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
