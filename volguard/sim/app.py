"""One API request in, one response out: faults, auth, rate limit, route, log.

Kept apart from the HTTP server so the pipeline reads top-down in one place. The order
matters and follows the platform: trouble on the way (latency, a dropped connection, a
proxy error page) happens before the API sees the request; auth comes before the rate
limit; a malformed body is the real answer, mangled on its way back.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from volguard.sim import auth, ids
from volguard.sim.faults import FaultError, Faults
from volguard.sim.ratelimit import RateLimiter
from volguard.sim.scenario import Scenario
from volguard.sim.state import ApiError, SimState

CONTROL_PREFIX = "/__sim/"
_HTML_ERROR = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    authorization: str | None = None
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON; an empty body is None (flyctl's snapshot POST sends none)."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"invalid JSON body: {e}") from e


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), headers=dict(headers or {}))

    @classmethod
    def error(cls, error: ApiError, headers: Mapping[str, str] | None = None) -> Response:
        return cls.json(error.status, error.body(), headers)


Handler = Callable[["SimApp", Request, Mapping[str, str]], Any]


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]


class SimApp:
    """The simulated API of one scenario; thread-safe, shared by all server threads."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.state = SimState(scenario)
        self.faults = Faults(scenario.faults)
        self.limiter = RateLimiter(scenario.limits)
        self._log: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.path.startswith(CONTROL_PREFIX):
            response = self._control(request)
        else:
            started = time.perf_counter()
            fault, response = self._api(request)
            self._record(request, response, fault, time.perf_counter() - started)
            self.state.emit()  # the fleet follows before the client has the answer
        response.headers.setdefault("fly-request-id", ids.request_id(self.scenario.primary_region))
        return response

    def requests(self) -> list[dict[str, Any]]:
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def service_seconds(self) -> float:
        with self._log_lock:
            return sum(entry["service_ms"] for entry in self._log) / 1000

    def reset(self) -> None:
        """Forget the request log, the injected faults and the rate-limit buckets."""
        with self._log_lock:
            self._log.clear()
        self.faults.reset()
        self.limiter.reset()

    # --- the API pipeline --------------------------------------------------------------

    def _api(self, request: Request) -> tuple[str | None, Response]:
        time.sleep(self.faults.latency_seconds)
        fault = self.faults.take()
        if fault == "drop":
            return fault, Response(0, drop=True)
        if fault and fault.startswith("fail_"):
            return fault, _server_error(int(fault.removeprefix("fail_")))
        if fault == "rate_limit":
            return fault, _too_many(1)
        if fault == "malformed_html":
            return fault, Response(200, _HTML_ERROR, content_type="text/html")
        response = self._serve(request)
        if fault == "malformed_truncated":
            response = Response(
                200, response.body[: len(response.body) // 2], headers=response.headers
            )
        return fault, response

    def _serve(self, request: Request) -> Response:
        reason = auth.refusal(request.authorization, self.scenario.tokens)
        if reason:
            return Response.error(ApiError(401, "unauthorized"), {"x-sim-reason": reason})
        retry_after = self.limiter.acquire(request.method, request.path)
        if retry_after is not None:
            return _too_many(retry_after)
        try:
            return self._route(request)
        except ApiError as e:
            return Response.error(e)

    def _route(self, request: Request) -> Response:
        for route in ROUTES:
            match = route.pattern.fullmatch(request.path)
            if not match:
                continue
            handler = route.methods.get(request.method)
            if handler is None:
                refused = ApiError(405, f"method {request.method} not allowed")
                return Response.error(refused, {"Allow": ", ".join(sorted(route.methods))})
            params = match.groupdict()
            self.state.check_app(params.pop("app"))
            return Response.json(200, handler(self, request, params))
        raise ApiError(404, "not found")

    def _record(
        self, request: Request, response: Response, fault: str | None, seconds: float
    ) -> None:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "status": None if response.drop else response.status,
            "service_ms": round(seconds * 1000, 3),
            "at": time.time(),
            "fault": fault,
        }
        with self._log_lock:
            self._log.append(entry)

    # --- control endpoints (not logged; no auth but for deploy) ------------------------------

    def _control(self, request: Request) -> Response:
        name = request.path.removeprefix(CONTROL_PREFIX).strip("/")
        allowed = {
            "requests": "GET",
            "state": "GET",
            "faults": "GET POST",
            "reset": "POST",
            "deploy": "POST",
        }
        if name not in allowed:
            return Response.error(ApiError(404, "not found"))
        if request.method not in allowed[name].split():
            return Response.error(ApiError(405, f"method {request.method} not allowed"))
        if name == "deploy":  # it changes the app: the app's token, as for the real API
            reason = auth.refusal(request.authorization, self.scenario.tokens)
            if reason:
                return Response.error(ApiError(401, "unauthorized"), {"x-sim-reason": reason})
        try:
            return Response.json(200, self._control_answer(name, request))
        except (ApiError, FaultError) as e:
            error = e if isinstance(e, ApiError) else ApiError(400, str(e))
            return Response.error(error)

    def _control_answer(self, name: str, request: Request) -> Any:
        if name == "requests":
            return self.requests()
        if name == "state":
            return self.state.to_json()
        if name == "reset":
            self.reset()
            return {"ok": True}
        if name == "deploy":
            return self.state.deploy(request.json())
        if request.method == "GET":
            return self.faults.snapshot()
        body = request.json() or {}
        if not isinstance(body, dict):
            raise ApiError(400, "faults: expected a JSON object")
        return self.faults.update(body)


# --- handlers: (app, request, path params) -> JSON payload ---------------------------------


def _list_machines(sim: SimApp, request: Request, _params: Mapping[str, str]) -> Any:
    query = parse_qs(request.query, keep_blank_values=True)
    metadata = {
        k.removeprefix("metadata."): v[-1] for k, v in query.items() if k.startswith("metadata.")
    }
    return sim.state.list_machines(
        include_deleted=query.get("include_deleted", ["false"])[-1].lower() in ("true", "1"),
        region=query["region"][-1] if "region" in query else None,
        metadata=metadata,
    )


def _get_machine(sim: SimApp, _request: Request, params: Mapping[str, str]) -> Any:
    return sim.state.get_machine(params["id"])


def _list_volumes(sim: SimApp, _request: Request, _params: Mapping[str, str]) -> Any:
    return sim.state.list_volumes()


def _create_volume(sim: SimApp, request: Request, _params: Mapping[str, str]) -> Any:
    body = request.json()
    if sim.faults.take_action("refuse_volume_next"):
        raise ApiError(412, _CAPACITY.format("volume"), "insufficient_capacity")
    return sim.state.create_volume(body)


def _destroy_volume(sim: SimApp, _request: Request, params: Mapping[str, str]) -> Any:
    return sim.state.destroy_volume(params["id"])


def _create_machine(sim: SimApp, request: Request, _params: Mapping[str, str]) -> Any:
    body = request.json()
    if sim.faults.take_action("refuse_machine_next"):
        raise ApiError(412, _CAPACITY.format("machine"), "insufficient_capacity")
    return sim.state.create_machine(body, fails=sim.faults.take_action("machine_fails_next"))


def _wait_machine(sim: SimApp, request: Request, params: Mapping[str, str]) -> Any:
    """fly-go's Wait: ?state=…&timeout=<seconds> (flaps/flaps_machines_wait.go @22d6e518);
    the SWAGGER default is `started` and 60 s."""
    query = parse_qs(request.query, keep_blank_values=True)
    try:
        timeout = float(query.get("timeout", ["60"])[-1])
    except ValueError:
        raise ApiError(400, "invalid timeout") from None
    state = query.get("state", ["started"])[-1]
    return sim.state.wait_machine(params["id"], state, timeout)


def _destroy_machine(sim: SimApp, request: Request, params: Mapping[str, str]) -> Any:
    """`?force=true` (SWAGGER `Machines_delete`) or fly-go's `?kill=true` (flaps_machines.go
    `Destroy` @22d6e518) destroys a started Machine."""
    query = parse_qs(request.query, keep_blank_values=True)
    force = any(query.get(k, ["false"])[-1].lower() in ("true", "1") for k in ("force", "kill"))
    return sim.state.destroy_machine(params["id"], force=force)


def _get_volume(sim: SimApp, _request: Request, params: Mapping[str, str]) -> Any:
    return sim.state.get_volume(params["id"])


def _list_snapshots(sim: SimApp, _request: Request, params: Mapping[str, str]) -> Any:
    return sim.state.list_snapshots(params["id"])


def _create_snapshot(sim: SimApp, _request: Request, params: Mapping[str, str]) -> Any:
    delay = sim.scenario.limits.snapshot_delay_seconds
    return sim.state.create_snapshot(params["id"], delay)


def _route(path: str, **methods: Handler) -> Route:
    regex = path.replace("{app}", "(?P<app>[^/]+)").replace("{id}", "(?P<id>[^/]+)")
    return Route(re.compile(regex), methods)


ROUTES = (
    _route("/v1/apps/{app}/machines", GET=_list_machines, POST=_create_machine),
    _route("/v1/apps/{app}/machines/{id}", GET=_get_machine, DELETE=_destroy_machine),
    _route("/v1/apps/{app}/machines/{id}/wait", GET=_wait_machine),
    _route("/v1/apps/{app}/volumes", GET=_list_volumes, POST=_create_volume),
    _route("/v1/apps/{app}/volumes/{id}", GET=_get_volume, DELETE=_destroy_volume),
    _route("/v1/apps/{app}/volumes/{id}/snapshots", GET=_list_snapshots, POST=_create_snapshot),
)


#: Fly's refusal when a host cannot take it (the `insufficient_capacity` code: SWAGGER
#: main.statusCode, FLYGO flaps/flaps_error.go); UNVERIFIED: the exact text.
_CAPACITY = "insufficient resources available to fulfill request: could not create {}"


def _server_error(status: int) -> Response:
    messages = {500: "internal server error", 502: "bad gateway", 503: "service unavailable"}
    return Response.error(ApiError(status, messages[status], "unknown"))


def _too_many(retry_after: int) -> Response:
    return Response.error(ApiError(429, "rate limit exceeded"), {"Retry-After": str(retry_after)})
