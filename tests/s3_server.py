"""A real S3-compatible server for the tests and benchmarks: moto's, and a strict proxy.

`moto_server` starts moto's standalone server (``python -m moto.server``) on loopback on a
free port. `StrictS3Proxy` is a real HTTP hop in front of it that behaves like Tigris where
moto is more lenient, and counts what reaches the server:

- an ``aws-chunked`` body (``Content-Encoding: aws-chunked``, or ``x-amz-content-sha256:
  STREAMING-…``, what botocore 1.36+ sends by default) is refused with 400, as stores that
  do not implement the chunked signing refuse it;
- bucket versioning is not implemented (501), as on Tigris;
- only the access key ids in ``access_keys`` are accepted (403 ``InvalidAccessKeyId``):
  moto alone accepts any;
- buckets in ``read_only`` refuse every object write (403 ``AccessDenied``);
- every object write (``PUT`` of an object or part, ``POST`` completing an upload) is
  counted per key in ``puts``, and ``on_put`` (when set) is called with its key first;
- a ``Content-MD5`` that does not match the body is refused (400 ``BadDigest``), as S3 and
  the stores that implement it do (moto does not check it); ``corrupt`` (a Counter of keys)
  damages that many PUT bodies of a key on the way, before that check, as a network might.

With ``tls=True`` it serves HTTPS with a self-signed certificate (``ca_bundle``: point
``AWS_CA_BUNDLE`` at it). Over plain HTTP botocore signs the payload and never sends
``aws-chunked``; over HTTPS it sends unsigned payloads, and since botocore 1.36 uploads them
as ``aws-chunked`` with a trailing checksum unless checksums are "when required": only an
HTTPS endpoint shows whether a client is configured for such stores.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import re
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class ServerDidNotStart(RuntimeError):
    """moto's server did not print its address in time."""


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port; yields its URL, stops it after."""
    with open(log, "wb") as out:
        # Port 0: the OS picks a free one; the server prints which. Its log goes to a file,
        # not a pipe: it logs every request, and a full pipe would block it.
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield _wait_for_port(server, log)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_for_port(server: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(
            r"Running on (http://127\.0\.0\.1:\d+)", log.read_text("utf-8", "replace")
        )
        if match:
            return match.group(1)
        if server.poll() is not None:
            break
        time.sleep(0.1)
    raise ServerDidNotStart(
        f"moto's S3 server did not start: {log.read_text('utf-8', 'replace')[-2000:]}"
    )


def client(endpoint: str, **config: object):
    """A boto3 S3 client for ``endpoint`` with the test credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(**config) if config else None,
    )


_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class StrictS3Proxy:
    """The proxy described in the module docstring; ``url`` is where clients connect."""

    def __init__(
        self,
        upstream: str,
        access_keys: tuple[str, ...] = (ACCESS_KEY,),
        *,
        tls: bool = False,
        directory: Path | None = None,
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.access_keys = set(access_keys)
        self.read_only: set[str] = set()
        self.puts: Counter[str] = Counter()
        self.corrupt: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        #: Called with the key of each object write before it is forwarded (tests use it to
        #: change files while a copy runs).
        self.on_put: Callable[[str], None] | None = None
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.ca_bundle: Path | None = None
        scheme = "http"
        if tls:
            if directory is None:
                raise ValueError("tls=True needs a directory for the certificate")
            self.ca_bundle, key = _self_signed(directory)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.ca_bundle, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._local = threading.local()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StrictS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.puts.clear()
            self.corrupt.clear()
            self.refused.clear()

    # -- one request --------------------------------------------------------------------

    def _refuse(self, handler: BaseHTTPRequestHandler, status: int, code: str, text: str) -> None:
        with self.lock:
            self.refused[code] += 1
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{text}</Message></Error>"
        ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        headers = handler.headers
        length = int(headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        method = handler.command

        match = _CREDENTIAL.search(headers.get("Authorization") or "")
        if match is None or match.group(1) not in self.access_keys:
            return self._refuse(
                handler,
                403,
                "InvalidAccessKeyId",
                "The Access Key Id you provided does not exist in our records.",
            )
        if "aws-chunked" in (headers.get("Content-Encoding") or "") or (
            headers.get("x-amz-content-sha256") or ""
        ).startswith("STREAMING-"):
            return self._refuse(
                handler, 400, "NotImplemented", "aws-chunked uploads are not supported"
            )
        if "chunked" in (headers.get("Transfer-Encoding") or ""):
            return self._refuse(handler, 411, "MissingContentLength", "Content-Length required")
        if "versioning" in query and method == "PUT":
            return self._refuse(handler, 501, "NotImplemented", "versioning is not supported")
        writes = key and method in {"PUT", "POST", "DELETE"}
        if writes and bucket in self.read_only:
            return self._refuse(handler, 403, "AccessDenied", "Access Denied")
        if key and (method == "PUT" or (method == "POST" and "uploadId" in query)):
            with self.lock:
                self.puts[key] += 1
                damage = method == "PUT" and body and self.corrupt[key] > 0
                if damage:
                    self.corrupt[key] -= 1
            if damage:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if self.on_put is not None:
                self.on_put(key)
            md5 = headers.get("Content-MD5")
            if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:  # noqa: S324
                return self._refuse(
                    handler, 400, "BadDigest", "The Content-MD5 you specified did not match"
                )

        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(
                self.upstream.hostname, self.upstream.port, timeout=120
            )
        forwarded = {k: v for k, v in headers.items() if k.lower() != "connection"}
        try:
            connection.request(method, handler.path, body=body, headers=forwarded)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None
            raise
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in {"connection", "transfer-encoding", "content-length"}:
                handler.send_header(name, value)
        if method == "HEAD":
            handler.send_header("Content-Length", response.getheader("Content-Length") or "0")
        else:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)
        return None


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written to ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "proxy-cert.pem", directory / "proxy-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
