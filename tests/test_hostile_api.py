"""The Machines API client against a server that never finishes its answer (#8 item 14).

httpx's timeouts are per operation: a server that sends one byte every half second never
trips a 2 s read timeout. The client's `timeout` is a total deadline for one call, so such
a server ends in VG200 within it. Values the API returns are data in later request paths
too: an id cannot walk to another endpoint.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from volguard.config import Settings
from volguard.errors import FlyUnavailable
from volguard.fly.client import MachinesClient, Token
from volguard.verify import verify

TOKEN = "fm2_lJPECAAAAAAAAMHmxBDrLQeKEzn7bHn2Sl4OaCs0wrVodHRw"


class DripServer:
    """A real HTTP server on 127.0.0.1 that answers every request one byte at a time."""

    def __init__(self, interval: float = 0.5, headers_first: bool = True) -> None:
        self.interval, self.headers_first = interval, headers_first
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        body = b"[" + b" " * 60 + b"]"  # 30 s at 0.5 s a byte
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n".encode()
        payload = body if self.headers_first else head + body
        try:
            conn.recv(65536)
            if self.headers_first:
                conn.sendall(head)
            for i in range(len(payload)):
                if self._stop.wait(self.interval):
                    break
                conn.sendall(payload[i : i + 1])
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


@pytest.fixture(params=[True, False], ids=["body-drips", "headers-drip"])
def drip(request: pytest.FixtureRequest) -> Iterator[DripServer]:
    server = DripServer(headers_first=request.param)
    yield server
    server.close()


def test_a_dripping_server_ends_within_the_configured_timeout(drip: DripServer) -> None:
    began = time.monotonic()
    with (
        MachinesClient(Token(TOKEN), base_url=drip.url, timeout=2.0, backoff=0.01) as client,
        pytest.raises(FlyUnavailable) as raised,
    ):
        client.list_machines("shop")
    took = time.monotonic() - began
    assert took < 3.5, f"took {took:.1f} s for a 2 s timeout"
    assert "2 s" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_a_dripping_server_is_vg200_in_verify(drip: DripServer, tmp_path: Path) -> None:
    path = tmp_path / "fly.toml"
    path.write_text('app = "shop"\n[mounts]\nsource = "d"\ndestination = "/data"\n')
    began = time.monotonic()
    report = verify(
        Settings.load(None),
        str(path),
        token=Token(TOKEN),
        client_factory=lambda token: MachinesClient(
            token, base_url=drip.url, timeout=2.0, backoff=0.01
        ),
    )
    took = time.monotonic() - began
    assert [f.id for f in report.findings if f.id.startswith("VG2")] == ["VG200"]
    assert took < 6, f"verify took {took:.1f} s against a 2 s timeout"


def test_an_id_from_the_api_cannot_walk_to_another_endpoint() -> None:
    import httpx

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json=[])

    with MachinesClient(Token(TOKEN), transport=httpx.MockTransport(handler)) as client:
        client.list_snapshots("shop", "../../../v1/apps/other/secrets?x=")
    assert seen == [
        "/v1/apps/shop/volumes/..%2F..%2F..%2Fv1%2Fapps%2Fother%2Fsecrets%3Fx%3D/snapshots"
    ]
