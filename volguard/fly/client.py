"""A small client for the Fly Machines API (fly-facts §3), on httpx.

Public surface: `MachinesClient`, `Token`, and the `FlyAPIError` family. The
client keeps to Fly's rate limits (about 1 request/s per action and
identifier, burst 3), retries what is safe to retry, and never lets the token
reach a message, a log line or a repr.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from volguard import __version__
from volguard.errors import (
    FlyAPIError,
    FlyAuthError,
    FlyNotFound,
    FlyUnavailable,
    VolguardError,
)
from volguard.fly.models import Machine, Snapshot, Volume

DEFAULT_BASE_URL = "https://api.machines.dev"
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")
#: What a token may hold: visible ASCII and the space of `FlyV1 fm2_…,fm2_…`.
_TOKEN_CHARS = re.compile(r"[\x20-\x7e]+")


# -- errors ------------------------------------------------------------------------------


# -- the token ---------------------------------------------------------------------------


class Token:
    """An API token. It renders as the Authorization header and nothing else shows it."""

    __slots__ = ("_raw",)

    def __init__(self, raw: str) -> None:
        raw = raw.strip()
        if not raw:
            raise VolguardError("FLY_API_TOKEN is empty")
        # An HTTP header carries visible ASCII and spaces only; anything else would fail later
        # inside httpx with the value in the message. Say what is wrong, never what is there.
        if not _TOKEN_CHARS.fullmatch(raw):
            kind = "a line break" if any(c in raw for c in "\r\n") else (
                "a control character" if any(ord(c) < 32 or ord(c) == 127 for c in raw)
                else "a non-ASCII character"
            )  # fmt: skip
            raise VolguardError(
                f"FLY_API_TOKEN contains {kind}, which no Fly token has; set it again "
                "from `fly tokens create` (the value is not shown)"
            )
        self._raw = raw

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Token | None:
        raw = (environ if environ is not None else os.environ).get("FLY_API_TOKEN", "").strip()
        return cls(raw) if raw else None

    def authorization(self) -> str:
        """The header value: macaroons as `FlyV1 …`, others as `Bearer …` (fly-facts §0.8)."""
        raw = self._raw
        if raw.startswith(("FlyV1 ", "Bearer ")):
            return raw
        if raw.startswith(_MACAROON_PREFIXES):
            return f"FlyV1 {raw}"
        return f"Bearer {raw}"

    def redact(self, text: str) -> str:
        """``text`` with every appearance of the token (or its parts) masked."""
        bare = self._raw.removeprefix("FlyV1 ").removeprefix("Bearer ")
        for secret in {self._raw, bare, *bare.split(",")}:
            if len(secret) >= 8:
                text = text.replace(secret, "[token]")
        return text

    def __repr__(self) -> str:
        return "Token([redacted])"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Token is not serialisable")


# -- a total deadline per call --------------------------------------------------------------


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend, each socket wait cut to the current call's deadline.

    httpx's timeouts bound each connect, read and write on its own: a server that sends a
    byte every few seconds never trips them, and a call could last for ever. Every wait on
    this backend's sockets ends by the deadline its thread set (`MachinesClient._request`).
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._local = threading.local()

    def set_deadline(self, deadline: float | None) -> None:
        self._local.deadline = deadline

    def clamp(self, timeout: float | None) -> float | None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = max(deadline - time.monotonic(), 0.001)  # 0 would mean "do not wait at all"
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self.clamp(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, self.clamp(timeout), socket_options)
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner, self._backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, self._backend.clamp(timeout))
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _deadline_transport(verify: bool, backend: _DeadlineBackend) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(verify=verify)
    pool = getattr(transport, "_pool", None)
    # httpx builds its httpcore pool without a way to pass a network backend: set it on the
    # pool (tests/test_hostile_api.py fails loudly if a new httpx moves it).
    if not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx's transport has no httpcore pool to give a deadline to")
    pool._network_backend = backend  # type: ignore[union-attr]
    return transport


# -- rate limiting -----------------------------------------------------------------------


class RateLimiter:
    """Token buckets per (method, path): Fly limits each action per identifier."""

    def __init__(self, rate: float = 1.0, burst: int = 3, clock=time.monotonic, sleep=time.sleep):
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, method: str, path: str) -> None:
        if self.rate <= 0:
            return
        while True:
            with self._lock:
                now = self._clock()
                tokens, last = self._buckets.get((method, path), (float(self.burst), now))
                tokens = min(float(self.burst), tokens + (now - last) * self.rate)
                if tokens >= 1:
                    self._buckets[(method, path)] = (tokens - 1, now)
                    return
                self._buckets[(method, path)] = (tokens, now)
                delay = (1 - tokens) / self.rate
            self._sleep(delay)


# -- the client --------------------------------------------------------------------------


class MachinesClient:
    """The calls volguard makes, each with a timeout, bounded retries and rate limiting."""

    def __init__(
        self,
        token: Token,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.25,
        max_delay: float = 8.0,
        limiter: RateLimiter | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = (
            base_url or os.environ.get("FLY_FLAPS_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/")
        self._token = token
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff, self._max_delay, self._sleep = backoff, max_delay, sleep
        self._limiter = limiter or RateLimiter(sleep=sleep)
        # A plain-http base URL (the simulator; _api.internal:4280 inside Fly's private
        # network) has no TLS to verify, and the CA bundle costs ~20 ms to load.
        verify = not self.base_url.startswith("http://")
        self._deadlines = _DeadlineBackend()
        if transport is None:
            transport = _deadline_transport(verify, self._deadlines)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={
                "Authorization": token.authorization(),
                "User-Agent": f"volguard/{__version__}",
                "Accept": "application/json",
            },
            transport=transport,
            verify=verify,
        )
        self.calls: Counter[str] = Counter()  # "GET /machines" -> count, for verbose output
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MachinesClient({self.base_url!r})"

    def __enter__(self) -> MachinesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- endpoints

    def list_machines(self, app: str) -> list[Machine]:
        """The app's Machines, less release-command and console ones (flyctl's ListActive)."""
        machines = self._list(f"/v1/apps/{_seg(app)}/machines", "machines", Machine.from_api)
        return [m for m in machines if not m.is_platform_helper]

    def list_volumes(self, app: str) -> list[Volume]:
        return self._list(f"/v1/apps/{_seg(app)}/volumes", "volumes", Volume.from_api)

    def list_snapshots(self, app: str, volume_id: str) -> list[Snapshot]:
        path = f"/v1/apps/{_seg(app)}/volumes/{_seg(volume_id)}/snapshots"
        return self._list(path, "snapshots", Snapshot.from_api)

    def create_volume(self, app: str, request: dict[str, Any]) -> Volume:
        """POST a volume. `size_gb` is required: the API default (3) differs from flyctl's (1)."""
        if "size_gb" not in request:
            raise ValueError("create_volume needs size_gb (fly-facts §0.7)")
        body = self._request("POST", f"/v1/apps/{_seg(app)}/volumes", "create volume", json=request)
        try:
            return Volume.from_api(body)
        except ValueError as e:
            raise FlyUnavailable(f"Fly API create volume: unexpected response ({e})") from None

    def get_volume(self, app: str, volume_id: str) -> Volume:
        """One volume (FLYGO flaps/flaps_volumes.go `GetVolume` @22d6e518): how a fork's
        `hydrating` or a restore's `restoring` is seen to end in `created`."""
        body = self._request("GET", f"/v1/apps/{_seg(app)}/volumes/{_seg(volume_id)}", "get volume")
        return self._parse(Volume.from_api, body, "get volume")

    def fork_volume(self, app: str, source_volume_id: str, *, name: str, region: str) -> Volume:
        """A fork: POST /volumes with `source_volume_id` (FLYCTL internal/command/volumes/
        fork.go @ad0172fa `runFork`). No size: a fork is the source's size."""
        request = {"name": name, "region": region, "source_volume_id": source_volume_id}
        body = self._request("POST", f"/v1/apps/{_seg(app)}/volumes", "fork volume", json=request)
        return self._parse(Volume.from_api, body, "fork volume")

    def restore_volume(
        self, app: str, snapshot_id: str, *, name: str, region: str, size_gb: int | None = None
    ) -> Volume:
        """A new volume from a snapshot: POST /volumes with `snapshot_id` (FLYCTL
        internal/command/volumes/create.go @ad0172fa, `--snapshot-id`)."""
        request: dict[str, Any] = {"name": name, "region": region, "snapshot_id": snapshot_id}
        if size_gb is not None:
            request["size_gb"] = size_gb
        body = self._request(
            "POST", f"/v1/apps/{_seg(app)}/volumes", "restore snapshot", json=request
        )
        return self._parse(Volume.from_api, body, "restore snapshot")

    def destroy_volume(self, app: str, volume_id: str) -> None:
        """DELETE /volumes/{id} (FLYGO flaps_volumes.go `DeleteVolume`). Fly refuses (412
        `failed_precondition: volume is currently bound to machine: …`) while a Machine
        holds it: destroy the Machine first."""
        path = f"/v1/apps/{_seg(app)}/volumes/{_seg(volume_id)}"
        self._request("DELETE", path, "destroy volume", parse=False)

    def get_machine(self, app: str, machine_id: str) -> Machine:
        path = f"/v1/apps/{_seg(app)}/machines/{_seg(machine_id)}"
        return self._parse(
            Machine.from_api, self._request("GET", path, "get machine"), "get machine"
        )

    def create_machine(self, app: str, request: dict[str, Any]) -> Machine:
        """POST /machines with a CreateMachineRequest (FLYGO flaps_machines.go `Launch`):
        the answer is the Machine, `created`; wait for `started` with `wait_machine`."""
        body = self._request(
            "POST", f"/v1/apps/{_seg(app)}/machines", "create machine", json=request
        )
        return self._parse(Machine.from_api, body, "create machine")

    def wait_machine(self, app: str, machine_id: str, state: str, timeout: int = 60) -> None:
        """GET /machines/{id}/wait?state=…&timeout=… (FLYGO flaps/flaps_machines_wait.go
        @22d6e518): blocks server-side until the state, at most `timeout` seconds (1–60,
        as fly-go clamps it); a Machine that does not get there is an HTTP 408 error."""
        timeout = max(1, min(int(timeout), 60))
        path = f"/v1/apps/{_seg(app)}/machines/{_seg(machine_id)}/wait"
        self._request(
            "GET", path, f"wait for machine {state}", params={"state": state, "timeout": timeout},
            parse=False, call_timeout=timeout + self._timeout,
        )  # fmt: skip

    def destroy_machine(self, app: str, machine_id: str, *, force: bool = True) -> None:
        """DELETE /machines/{id}?force=true (SWAGGER `Machines_delete`; fly-go's `Destroy`
        spells it `kill=true`): a started Machine is killed, its volume released."""
        path = f"/v1/apps/{_seg(app)}/machines/{_seg(machine_id)}"
        params = {"force": "true"} if force else None
        self._request("DELETE", path, "destroy machine", params=params, parse=False)

    def create_snapshot(self, app: str, volume_id: str) -> None:
        """Ask for an on-demand snapshot; its body is opaque, poll `list_snapshots` after."""
        path = f"/v1/apps/{_seg(app)}/volumes/{_seg(volume_id)}/snapshots"
        self._request("POST", path, "create snapshot", json={}, parse=False)

    # -- plumbing

    @staticmethod
    def _parse(parse: Callable[[Any], Any], body: Any, what: str) -> Any:
        try:
            return parse(body)
        except ValueError as e:
            raise FlyUnavailable(f"Fly API {what}: unexpected response ({e})") from None

    def _list(self, path: str, what: str, parse: Callable[[Any], Any]) -> list[Any]:
        body = self._request("GET", path, f"list {what}")
        if not isinstance(body, list):
            raise FlyUnavailable(f"Fly API list {what}: expected a JSON array, got {_kind(body)}")
        try:
            return [parse(item) for item in body]
        except ValueError as e:
            raise FlyUnavailable(f"Fly API list {what}: unexpected response ({e})") from None

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: Any = None,
        parse: bool = True,
        params: dict[str, Any] | None = None,
        call_timeout: float | None = None,
    ) -> Any:
        """One logical call: rate limit, send, retry what is safe, decode JSON.

        The whole call, retries and pauses included, ends within the client's ``timeout``
        (``call_timeout`` for a call the server holds on purpose, the wait endpoint) from
        its first send, however slowly the server answers.
        """
        limit = call_timeout if call_timeout is not None else self._timeout
        idempotent = method == "GET"
        last_problem = ""
        deadline: float | None = None
        attempt = 0
        for attempt in range(1, self._attempts + 1):
            self._limiter.wait(method, path)
            self._count(method, path)
            if deadline is None:
                deadline = time.monotonic() + limit
            self._deadlines.set_deadline(deadline)
            try:
                response = self._http.request(method, path, json=json, params=params, timeout=limit)
            except httpx.ConnectError as e:
                # Nothing reached the server: safe to retry even a POST.
                last_problem = f"cannot connect to {self.base_url} ({_reason(e)})"
                if not self._pause(attempt, None, deadline):
                    break
                continue
            except httpx.TransportError as e:
                last_problem = f"{_reason(e)} talking to {self.base_url}"
                if not idempotent:
                    raise FlyUnavailable(
                        f"Fly API {what}: {last_problem}; it may or may not have been applied"
                    ) from None
                if not self._pause(attempt, None, deadline):
                    break
                continue
            finally:
                self._deadlines.set_deadline(None)
            status = response.status_code
            if status == 429 or (status >= 500 and idempotent):
                last_problem = f"HTTP {status}{_fly_error_suffix(response)}"
                retry_after = response.headers.get("Retry-After") if status == 429 else None
                if not self._pause(attempt, retry_after, deadline):
                    break
                continue
            if status >= 500:  # a POST that failed on the server side may still have happened
                raise FlyUnavailable(
                    f"Fly API {what}: HTTP {status}{_fly_error_suffix(response)}; "
                    "it may or may not have been applied",
                    status=status,
                )
            if status >= 400:
                raise _error_for(what, response, self._token)
            if not parse:
                return None
            try:
                return response.json()
            except (ValueError, RecursionError):  # RecursionError: nested beyond the stack
                last_problem = f"HTTP {status} with a body that is not JSON ({_snippet(response)})"
                if not idempotent:
                    raise FlyUnavailable(f"Fly API {what}: {last_problem}") from None
                if not self._pause(attempt, None, deadline):
                    break
        tries = f"after {attempt} attempt{'' if attempt == 1 else 's'}"
        if deadline is not None and attempt < self._attempts:
            tries = f"no answer within the {limit:g} s timeout, {tries}"
        raise FlyUnavailable(self._token.redact(f"Fly API {what}: {last_problem} ({tries})"))

    def _pause(self, attempt: int, retry_after: str | None, deadline: float) -> bool:
        """Wait before the next attempt; False when there is none (the last, or no time)."""
        if attempt >= self._attempts:
            return False
        delay = _retry_after_seconds(retry_after)
        if delay is None:
            delay = self._backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)  # noqa: S311
        delay = min(delay, self._max_delay)
        if time.monotonic() + delay >= deadline:
            return False
        self._sleep(delay)
        return True

    def _count(self, method: str, path: str) -> None:
        parts = path.split("/")
        action = f"{method} /{parts[-1]}" if len(parts) > 4 else f"{method} {path}"
        with self._calls_lock:
            self.calls[action] += 1


def _seg(value: str) -> str:
    """``value`` as one path segment: an id from the API can never reach another endpoint."""
    return urllib.parse.quote(str(value), safe="")


def _error_for(what: str, response: httpx.Response, token: Token) -> FlyAPIError:
    status = response.status_code
    fly_error = _fly_error(response)
    reason = response.reason_phrase or ""
    message = f"Fly API {what}: HTTP {status} {reason}".rstrip()
    if fly_error:
        message += f": {fly_error}"
    message = token.redact(message)
    cls = FlyAuthError if status in (401, 403) else FlyNotFound if status == 404 else FlyAPIError
    return cls(message, status=status, fly_error=token.redact(fly_error))


def _fly_error(response: httpx.Response) -> str:
    """Fly's `{"error": "..."}` text, on one line and short."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return _snippet(response)
    text = body.get("error") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return ""
    return " ".join(text.split())[:300]


def _fly_error_suffix(response: httpx.Response) -> str:
    text = _fly_error(response)
    return f": {text}" if text else ""


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return (text[:80] + "…") if len(text) > 80 else (text or "empty body")


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__


def _kind(value: Any) -> str:
    return "an object" if isinstance(value, dict) else type(value).__name__
