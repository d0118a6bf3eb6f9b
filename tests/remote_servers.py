"""Real servers on loopback for the remote-source tests, started and stopped by the tests.

- :class:`RangeServer`: an HTTP server (``http.server`` subclass) serving a directory with
  range requests, ETag and Last-Modified, counting requests and bytes, and able to fail the
  next N requests (503), answer a fixed status (404/403) for a path, or hold the GETs a
  test's predicate picks until the test releases them (``hold``, ``held``, ``release()``).
- :class:`S3Server`: moto's S3 server (``moto[server]``) in a thread, with
  ``AWS_S3_ENDPOINT``/``AWS_HTTPS=NO``/``AWS_VIRTUAL_HOSTING=FALSE`` set for GDAL; with
  ``auth=True`` moto checks credentials and IAM policies (real 403s).
- :class:`FaultProxy`: an HTTP proxy in front of another loopback server (moto) that fails
  the next N requests (a 503 or a connection reset) and forwards the rest unchanged.
- :class:`StacApiServer`: ``rustac serve`` (a STAC API) over an ItemCollection file, with
  its in-memory backend, or its DuckDB backend over a stac-geoparquet file
  (``duckdb=True``), which honours CQL2 ``filter``.
"""

from __future__ import annotations

import email.utils
import http.client
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _ServedInThread:
    """``with server:`` runs ``self.httpd`` (an HTTP server on loopback) in a daemon thread."""

    httpd: ThreadingHTTPServer

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RangeServer(_ServedInThread):
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
                if body and server.hold is not None and server.hold(path_only):
                    with server.lock:
                        server.held.append(path_only)
                    server.released.wait(timeout=300)  # a reader killed meanwhile: its socket is gone
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
            #: GETs of the paths for which ``hold(path)`` is true wait until :meth:`release`
            self.hold = None
            self.held: list[str] = []
            self.released = threading.Event()

    def release(self) -> None:
        """Let every held GET (and every later one) through."""
        self.hold = None
        self.released.set()

    def gets(self, suffix: str = "") -> list:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith(suffix)]



S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_S3_ENDPOINT",
          "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_NO_SIGN_REQUEST")


class S3Server:
    """moto's S3 server on loopback, with the GDAL/AWS environment pointing at it while open.

    ``auth=True``: moto checks every request's credentials (SigV4) and IAM policies, as
    AWS does. The environment then holds the keys of an IAM user allowed ``s3:*``
    (``keys["reader"]``); ``keys["nobody"]`` belong to a user without any policy (moto
    answers 403 AccessDenied), and any other key id is unknown (403
    InvalidAccessKeyId). moto's state (buckets, users, the auth switch) is process-wide:
    it is reset when the server closes.
    """

    def __init__(self, auth: bool = False) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.auth = auth
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.keys: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> S3Server:  # noqa: PYI034
        self.saved = {k: os.environ.get(k) for k in S3_ENV}
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{port}"
        self.url = f"http://{self.endpoint}"
        os.environ.update(
            AWS_ACCESS_KEY_ID="geoseg-test", AWS_SECRET_ACCESS_KEY="geoseg-test-secret", AWS_DEFAULT_REGION="us-east-1",
            AWS_S3_ENDPOINT=self.endpoint, AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE",
        )
        import boto3

        if self.auth:
            iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                               aws_access_key_id="geoseg-test", aws_secret_access_key="geoseg-test-secret")
            for user, actions in (("reader", ["s3:*"]), ("nobody", None)):
                iam.create_user(UserName=f"geoseg-{user}")
                key = iam.create_access_key(UserName=f"geoseg-{user}")["AccessKey"]
                self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
                if actions:
                    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
                    iam.put_user_policy(UserName=f"geoseg-{user}", PolicyName="s3", PolicyDocument=json.dumps(policy))
            os.environ.update(AWS_ACCESS_KEY_ID=self.keys["reader"][0], AWS_SECRET_ACCESS_KEY=self.keys["reader"][1])
            self._moto_api("reset-auth", b"0")  # from now on every request is authenticated
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",  # explicit keys: boto3's
                                   aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],  # session caches the first
                                   aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])  # ones it saw
        return self

    def _moto_api(self, what: str, body: bytes) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/{what}", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()

    def upload(self, bucket: str, files: dict[str, Path]) -> None:
        try:
            self.client.create_bucket(Bucket=bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass
        for key, path in files.items():
            self.client.upload_file(str(path), bucket, key)

    def __exit__(self, *exc) -> None:
        try:
            if self.auth:
                self._moto_api("reset-auth", b"inf")
            self._moto_api("reset", b"")
        finally:
            self.server.stop()
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy(_ServedInThread):
    """An HTTP proxy on loopback in front of ``upstream`` (``host:port``, e.g. moto's S3).

    Forwards every request unchanged (the Host header too, so S3 signatures still verify)
    and relays the answer, except the next ``fail_next`` requests: answered 503 with S3's
    ``SlowDown`` error (``fail_mode="503"``) or dropped with a TCP reset
    (``fail_mode="reset"``). Counts requests (``requests``: method, path) and failures.
    ``hold_put``: a path suffix; the first PUT of a matching path is held (``held`` is
    set) until ``release`` is set, so a test can kill the client mid-upload.
    """

    def __init__(self, upstream: str, fail_next: int = 0, fail_mode: str = "503") -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.failures = 0
        self.fail_next = fail_next
        self.fail_mode = fail_mode
        self.hold_put: str | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._forward()

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.requests.append((self.command, self.path.split("?", 1)[0]))
                    fail = proxy.fail_next > 0
                    proxy.fail_next -= fail
                    proxy.failures += fail
                    hold = (self.command == "PUT" and proxy.hold_put is not None and not proxy.held.is_set()
                            and self.path.split("?", 1)[0].endswith(proxy.hold_put))
                    if hold:
                        proxy.held.set()
                if hold:
                    proxy.release.wait(60)
                if fail and proxy.fail_mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()  # RST, no answer
                    return
                if fail:
                    err = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self._reply(503, [("Content-Type", "application/xml")], err)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP | {"content-length"}]
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self._reply(resp.status, kept + ([("Content-Length", length)] if length is not None else []),
                                b"" if self.command == "HEAD" else data, length_given=True)
                finally:
                    conn.close()

            def _reply(self, status: int, headers: list, data: bytes, length_given: bool = False) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not length_given:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a reset connection: expected
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.httpd.server_address[1]}"



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: DuckDB extensions that ``rustac serve`` loads for its DuckDB backend.
DUCKDB_EXTENSIONS = ("spatial", "icu", "parquet")
_DUCKDB_PLATFORMS = {("Linux", "x86_64"): "linux_amd64", ("Linux", "aarch64"): "linux_arm64",
                     ("Darwin", "arm64"): "osx_arm64", ("Darwin", "x86_64"): "osx_amd64"}


def duckdb_home(home: Path) -> str | None:
    """Make ``home`` a HOME under which ``rustac serve`` finds the DuckDB extensions it
    loads (``~/.duckdb/extensions/VERSION/PLATFORM``), linked from the
    ``duckdb-extension-*`` wheels: DuckDB would download them, and there is no network
    here. None when rustac's DuckDB loads them; else why not (a reason to skip)."""
    if shutil.which("rustac") is None:
        return "rustac (pip install rustac) not installed"
    plat = _DUCKDB_PLATFORMS.get((platform.system(), platform.machine()))
    found = {}
    for name in DUCKDB_EXTENSIONS:
        spec = importlib.util.find_spec(f"duckdb_extension_{name}")
        files = sorted(Path(spec.submodule_search_locations[0]).glob(f"extensions/v*/{name}.duckdb_extension")) if spec else []
        if not files:
            return f"duckdb-extension-{name} not installed (pip install -c constraints.txt -e '.[test]')"
        found[name] = files[-1]
    versions = {f.parent.name for f in found.values()}
    if len(versions) != 1 or plat is None:
        return f"duckdb-extension-* wheels of different DuckDB versions ({sorted(versions)}) or an unknown platform"
    ext_dir = Path(home) / ".duckdb" / "extensions"
    target = ext_dir / versions.pop() / plat
    target.mkdir(parents=True, exist_ok=True)
    for name, f in found.items():
        link = target / f.name
        if not link.exists():
            link.symlink_to(f)
    try:  # the DuckDB inside rustac loads exactly its own version's extensions
        import rustac

        rustac.DuckdbClient(extension_directory=str(ext_dir), install_extensions=False)
    except Exception as exc:  # noqa: BLE001 - rustac raises its own error type
        wanted = re.search(r"extensions/(v[\d.]+)/", str(exc))
        return (f"rustac's DuckDB loads extensions of DuckDB {wanted.group(1) if wanted else '?'}, the duckdb-extension-* "
                f"wheels are of {target.parent.name}: install the pins of constraints.txt")
    return None


class StacApiServer:
    """``rustac serve ITEMS.json`` on loopback; restart to add Items.

    The default in-memory backend ignores ``filter``/``query`` (it answers no Item at
    all). ``duckdb=True`` serves the Items from a stac-geoparquet copy (``rustac
    translate``) through rustac's DuckDB backend, which evaluates CQL2 ``filter``
    (text and JSON, GET and POST) and answers 500 to ``query``; ``home`` must have been
    prepared by :func:`duckdb_home`.
    """

    def __init__(self, items_file: Path, duckdb: bool = False, home: Path | None = None) -> None:
        self.items_file = Path(items_file)
        self.duckdb = duckdb
        self.home = home
        self.exe = shutil.which("rustac")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        served, env, options = self.items_file, None, ["--create-collections"]
        if self.duckdb:
            served = self.items_file.with_suffix(".parquet")
            subprocess.run([self.exe, "translate", str(self.items_file), str(served)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            env, options = {**os.environ, "HOME": str(self.home)}, ["--use-duckdb", "true"]
        self.proc = subprocess.Popen(
            [self.exe, "serve", str(served), "--addr", f"127.0.0.1:{port}", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
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
