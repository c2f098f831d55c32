"""The simulator over real HTTP: a stdlib server and `SimServer`, its handle for tests.

Tests talk to it through real sockets, with the same client code that talks to
api.machines.dev, so connection handling (keep-alive, dropped connections, truncated
bodies) is exercised too. Use it as a context manager::

    with SimServer(load_scenario("incident")) as sim:
        client = MachinesClient(token, base_url=sim.url)   # the client adds /v1
        ...
        sim.inject(fail_next=2); sim.requests(); sim.state
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from volguard.sim.app import Request, Response, SimApp
from volguard.sim.auth import authorization_header
from volguard.sim.scenario import (
    Limits,
    Scenario,
    ScenarioError,
    load_scenario,
    make_fleet_scenario,
    parse_scenario,
    scenario_path,
    shipped_scenarios,
)
from volguard.sim.state import SimState

__all__ = [
    "Limits",
    "Scenario",
    "ScenarioError",
    "SimServer",
    "load_scenario",
    "make_fleet_scenario",
    "parse_scenario",
    "scenario_path",
    "shipped_scenarios",
]


class SimServer:
    """The simulated Machines API on 127.0.0.1, served from a daemon thread."""

    def __init__(
        self, scenario: Scenario | str | Path = "healthy", *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.app = SimApp(self.scenario)
        self._address = (host, port)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SimServer:
        self._httpd = _HTTPServer(self._address, self.app)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},  # how long stop() waits for the loop
            name=f"volguard-sim:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so no thread lingers."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("SimServer is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, without /v1 (like FLY_FLAPS_BASE_URL; clients add /v1)."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def token(self) -> str:
        """The scenario's first accepted token."""
        return self.scenario.tokens[0]

    @property
    def auth_header(self) -> str:
        """The Authorization value a correct client sends with `token`."""
        return authorization_header(self.token)

    @property
    def state(self) -> SimState:
        return self.app.state

    def requests(self) -> list[dict[str, Any]]:
        """Every API request so far: method, path, query, status, service_ms, at, fault."""
        return self.app.requests()

    def inject(self, **faults: float) -> dict[str, float]:
        """Same as POST /__sim/faults, e.g. ``inject(fail_next=2, latency_ms=50)``."""
        return self.app.faults.update(faults)

    def deploy(self, fly_toml: str | None = None, **options: Any) -> dict[str, Any]:
        """Same as POST /__sim/deploy (what `flyctl deploy` calls): apply fly_toml (None:
        the config deployed last) with DeployOptions such as ``yes=True``; raises
        `ApiError` when the platform refuses. Does not touch a LocalFleet: call
        ``fleet.sync(sim)`` afterwards (the flyctl stand-in does that by itself)."""
        body = {"app": self.scenario.app, "fly_toml": fly_toml, **options}
        return self.app.state.deploy(body)

    def reset(self) -> None:
        """Same as POST /__sim/reset: request log, faults and rate-limit buckets."""
        self.app.reset()

    def service_seconds(self) -> float:
        """Total time spent serving API requests (for benchmarks)."""
        return self.app.service_seconds()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: SimApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Bytes in, bytes out; everything else is `SimApp`'s job."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx and the real API use
    server_version = "Fly/sim"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection does not hold its thread forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, alive=True)

    def finish(self) -> None:
        self.server.track(self.connection, alive=False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is at /__sim/requests."""

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=url.path,
            query=url.query,
            authorization=self.headers.get("Authorization"),
            body=body,
        )
        self._write(self.server.app.handle(request))

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._write(Response.json(411, {"error": "Content-Length required"}))
            return None
        try:
            return self.rfile.read(int(length)) if length else b""
        except ValueError:
            self.close_connection = True
            self._write(Response.json(400, {"error": "invalid Content-Length"}))
            return None

    def _write(self, response: Response) -> None:
        if response.drop:
            self.close_connection = True  # nothing written: the client sees EOF
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)
