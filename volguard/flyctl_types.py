"""flyctl's Go types for fly.toml as a table, and the check that finds a value flyctl refuses.

flyctl reads fly.toml in three steps (FLYCTL `internal/appconfig/serde.go` `unmarshalTOML`,
`patches.go` `applyPatches` / `mapToConfig`, commit ad0172face303b77584eea95b46fa3ddc61d5ddd):

1. go-toml decodes the text into a plain map;
2. the patches of `configPatches` rewrite old shapes in that map (`[mounts]` as a table, the
   `mount` key, `concurrency = "20,25"`, `port = "80"`, durations as numbers, `[[env]]` …);
   a shape a patch does not know is an error;
3. the map goes through `json.Marshal` and `json.Unmarshal` into `Config` (config.go,
   service.go, toplevelcheck.go and fly-go's machine_types.go / duration.go at
   22d6e518f42d50a81b4485da918741563354b3d3). encoding/json ignores keys no field declares and
   matches names case-insensitively, but a value of the wrong JSON type for its Go field (a
   string for an `int`, a table for a `[]string`, 1.5 for an `int`), a value a field's own
   `UnmarshalJSON` rejects (`fly.Duration`, `MachineAutostop`, `MachinePersistRootfs`), or a
   NaN/Inf float that `json.Marshal` cannot write is an error.

Any error in step 2 or 3 makes flyctl drop the whole configuration and keep only `app`
(`unmarshalTOML`'s fallback, `v2UnmarshalError`); `fly deploy`, `fly launch` and
`fly config validate` then refuse the file (validation.go `Validate`, platformversion.go).

`type_problems()` walks the raw TOML data once against `CONFIG` and returns every such value
with its path in the file. It is pure and needs no import beyond the standard library.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any, NamedTuple

# -- the Go types ----------------------------------------------------------------------------


class Kind(NamedTuple):
    """A Go scalar type, or a field type with its own decoding (a patch or an UnmarshalJSON)."""

    name: str
    expected: str  # how a message names what flyctl wants


class Slice(NamedTuple):
    elem: Any


class Map(NamedTuple):  # map[string]elem
    elem: Any


class Struct(NamedTuple):
    go_name: str
    fields: dict[str, Any]  # json name -> type


STRING = Kind("string", "a string")
INT = Kind("int", "an integer")
UINT32 = Kind("uint32", "an integer from 0 to 4294967295")
FLOAT = Kind("float64", "a number")
BOOL = Kind("bool", "true or false")
ANY = Kind("any", "any value")
#: fly.Duration.UnmarshalJSON: a number (nanoseconds) or a Go duration string such as "10s"
DURATION = Kind("fly.Duration", 'a duration such as "10s"')
#: fly.MachineAutostop.UnmarshalJSON: a boolean or "off" / "stop" / "suspend"
AUTOSTOP = Kind("fly.MachineAutostop", 'true, false, "off", "stop" or "suspend"')
#: fly.MachinePersistRootfs.UnmarshalJSON: "", "none", "never", "restart", "always" or 0–3
PERSIST_ROOTFS = Kind("fly.MachinePersistRootfs", '"never", "restart" or "always"')

# patches.go, applied before the JSON decoding
CAST_INT = Kind("castToInt", "an integer (or a string of digits)")
CAST_STRING = Kind("castToString", "any value")  # always succeeds
CAST_DURATION = Kind("_castDuration", 'a duration such as "10s", or a number')
STRING_OR_SLICE = Kind("stringOrSliceToSlice", 'a string or an array of strings, like ["cmd"]')
CONCURRENCY = Kind("_patchService concurrency", 'a table, or "soft,hard" limits such as "20,25"')
CHECK_HEADERS = Kind("_patchCheckHeaders", "a table of header = value")
ENV = Kind("patchEnv", "a table of NAME = value")
PROCESSES = Kind("patchProcesses", "a table of group = command")
TOP_CHECKS = Kind("patchTopLevelChecks", "a table of named checks")


class ArrayOfMap(NamedTuple):
    """ensureArrayOfMap: one table or an array of tables, each decoded as ``elem``."""

    elem: Struct


_GUEST = {  # fly.MachineGuest, embedded (inline) in Compute
    "cpu_kind": STRING,
    "cpus": INT,
    "memory_mb": INT,
    "max_memory_mb": INT,
    "gpus": INT,
    "gpu_kind": STRING,
    "host_dedication_id": STRING,
    "persist_rootfs": PERSIST_ROOTFS,
    "kernel_args": Slice(STRING),
}
COMPUTE = Struct(
    "Compute",
    {"size": STRING, "memory": STRING, **_GUEST, "processes": Slice(STRING)},
)
#: patchCompute casts `memory` to a string in [[vm]] (not in deploy.release_command_vm)
COMPUTE_PATCHED = Struct("Compute", {**COMPUTE.fields, "memory": CAST_STRING})

_CHECK_COMMON = {
    "interval": DURATION,
    "timeout": DURATION,
    "grace_period": DURATION,
}
_HTTP_CHECK = {
    **_CHECK_COMMON,
    "method": STRING,
    "path": STRING,
    "protocol": STRING,
    "tls_skip_verify": BOOL,
    "tls_server_name": STRING,
    "headers": Map(STRING),
}
SERVICE_TCP_CHECK = Struct("ServiceTCPCheck", _CHECK_COMMON)
SERVICE_HTTP_CHECK = Struct("ServiceHTTPCheck", _HTTP_CHECK)
_PATCHED_CHECK = {  # _patchCheck: durations cast, headers normalised
    "interval": CAST_DURATION,
    "timeout": CAST_DURATION,
    "grace_period": CAST_DURATION,
    "headers": CHECK_HEADERS,
}
SERVICE_TCP_CHECK_PATCHED = Struct("ServiceTCPCheck", {**_CHECK_COMMON, **_PATCHED_CHECK})
SERVICE_HTTP_CHECK_PATCHED = Struct("ServiceHTTPCheck", {**_HTTP_CHECK, **_PATCHED_CHECK})
TOPLEVEL_CHECK = Struct(
    "ToplevelCheck",
    {"port": INT, "type": STRING, **_HTTP_CHECK, **_PATCHED_CHECK, "processes": Slice(STRING)},
)
MACHINE_CHECK = Struct(
    "ServiceMachineCheck",
    {
        "command": Slice(STRING),
        "image": STRING,
        "entrypoint": Slice(STRING),
        "kill_signal": STRING,
        "kill_timeout": DURATION,
    },
)
CONCURRENCY_TABLE = Struct(
    "fly.MachineServiceConcurrency", {"type": STRING, "hard_limit": INT, "soft_limit": INT}
)
TLS_OPTIONS = Struct(
    "fly.TLSOptions",
    {"alpn": Slice(STRING), "versions": Slice(STRING), "default_self_signed": BOOL},
)
HTTP_OPTIONS = Struct(
    "fly.HTTPOptions",
    {
        "compress": BOOL,
        "response": Struct("fly.HTTPResponseOptions", {"headers": Map(ANY), "pristine": BOOL}),
        "h2_backend": BOOL,
        "idle_timeout": UINT32,
        "headers_read_timeout": UINT32,
        "replay_cache": Slice(
            Struct(
                "fly.ReplayCache",
                {
                    "path_prefix": STRING,
                    "ttl_seconds": INT,
                    "type": STRING,
                    "name": STRING,
                    "allow_bypass": BOOL,
                },
            )
        ),
    },
)
_PORT = {
    "port": INT,
    "start_port": INT,
    "end_port": INT,
    "handlers": Slice(STRING),
    "force_https": BOOL,
    "tls_options": TLS_OPTIONS,
    "http_options": HTTP_OPTIONS,
    "proxy_proto_options": Struct("fly.ProxyProtoOptions", {"version": STRING}),
}
MACHINE_PORT = Struct("fly.MachinePort", _PORT)
_SERVICE_COMMON = {
    "auto_stop_machines": AUTOSTOP,
    "auto_start_machines": BOOL,
    "min_machines_running": INT,
    "processes": Slice(STRING),
    "machine_checks": Slice(MACHINE_CHECK),
}
HTTP_SERVICE = Struct(
    "HTTPService",
    {
        "internal_port": INT,
        "force_https": BOOL,
        **_SERVICE_COMMON,
        "concurrency": CONCURRENCY_TABLE,
        "tls_options": TLS_OPTIONS,
        "http_options": HTTP_OPTIONS,
        "checks": Slice(SERVICE_HTTP_CHECK),
    },
)
#: [[services]] as _patchService leaves it for the JSON decoding
SERVICE = Struct(
    "Service",
    {
        "protocol": STRING,
        "internal_port": CAST_INT,
        **_SERVICE_COMMON,
        "ports": ArrayOfMap(Struct("fly.MachinePort", {**_PORT, "port": CAST_INT})),
        "concurrency": CONCURRENCY,
        "tcp_checks": ArrayOfMap(SERVICE_TCP_CHECK_PATCHED),
        "http_checks": ArrayOfMap(SERVICE_HTTP_CHECK_PATCHED),
    },
)
MOUNT = Struct(
    "Mount",
    {
        "source": STRING,
        "destination": STRING,
        "initial_size": CAST_STRING,  # patchMounts casts it; the other sizes stay strings
        "snapshot_retention": INT,
        "scheduled_snapshots": BOOL,
        "auto_extend_size_threshold": INT,
        "auto_extend_size_increment": STRING,
        "auto_extend_size_limit": STRING,
        "processes": Slice(STRING),
    },
)
METRICS = Struct(
    "Metrics", {"port": INT, "path": STRING, "https": BOOL, "processes": Slice(STRING)}
)
BUILD = Struct(
    "Build",
    {
        "builder": STRING,
        "args": Map(STRING),
        "buildpacks": Slice(STRING),
        "image": STRING,
        "settings": Map(ANY),
        "builtin": STRING,
        "dockerfile": STRING,
        "ignorefile": STRING,
        "build-target": STRING,
        "build_target": STRING,  # patchBuild renames it to build-target
        "compose": Struct("BuildCompose", {"file": STRING}),
        "compression": STRING,
        "compression_level": INT,
    },
)
EXPERIMENTAL = Struct(
    "Experimental",
    {
        "cmd": STRING_OR_SLICE,
        "entrypoint": STRING_OR_SLICE,
        "exec": STRING_OR_SLICE,
        "auto_rollback": BOOL,
        "enable_consul": BOOL,
        "enable_etcd": BOOL,
        "lazy_load_images": BOOL,
        "attached": Struct(
            "Attached", {"secrets": Struct("AttachedSecrets", {"export": Map(STRING)})}
        ),
        "machine_config": STRING,
    },
)
DEPLOY = Struct(
    "Deploy",
    {
        "strategy": STRING,
        "max_unavailable": FLOAT,
        "wait_timeout": DURATION,
        "release_command": STRING,
        "release_command_timeout": DURATION,
        "release_command_vm": COMPUTE,
        "seed_command": STRING,
    },
)
#: appconfig.Config, with the top-level keys the patches rewrite (config.go `type Config`)
CONFIG = Struct(
    "Config",
    {
        "app": STRING,
        "primary_region": STRING,
        "kill_signal": STRING,
        "kill_timeout": CAST_DURATION,  # patchTopFields
        "swap_size_mb": INT,
        "console_command": STRING,
        "experimental": EXPERIMENTAL,  # patchExperimental: must be a table
        "build": BUILD,  # patchBuild: must be a table
        "deploy": DEPLOY,
        "env": ENV,
        "processes": PROCESSES,
        "mounts": ArrayOfMap(MOUNT),
        "mount": ArrayOfMap(MOUNT),  # patchMounts merges the legacy key
        "http_service": HTTP_SERVICE,
        "services": ArrayOfMap(SERVICE),
        "checks": TOP_CHECKS,
        "files": Slice(
            Struct(
                "File",
                {
                    "guest_path": STRING,
                    "local_path": STRING,
                    "secret_name": STRING,
                    "raw_value": STRING,
                    "processes": Slice(STRING),
                },
            )
        ),
        "host_dedication_id": STRING,
        "machine_config": STRING,
        "container": STRING,
        "machine_checks": Slice(MACHINE_CHECK),
        "restart": Slice(
            Struct("Restart", {"policy": STRING, "retries": INT, "processes": Slice(STRING)})
        ),
        "vm": ArrayOfMap(COMPUTE_PATCHED),  # patchCompute merges compute, computes and vm
        "compute": ArrayOfMap(COMPUTE_PATCHED),
        "computes": ArrayOfMap(COMPUTE_PATCHED),
        "statics": Slice(
            Struct(
                "Static",
                {
                    "guest_path": STRING,
                    "url_prefix": STRING,
                    "tigris_bucket": STRING,
                    "index_document": STRING,
                },
            )
        ),
        "metrics": ArrayOfMap(METRICS),  # patchMetrics merges metric and metrics
        "metric": ArrayOfMap(METRICS),
    },
)

#: Legacy keys only a patch knows (it merges them into a field); no Go field carries them.
_PATCH_ONLY_KEYS = frozenset({"mount", "compute", "computes", "metric"})

#: Top-level keys whose patch runs only under their exact name; another spelling that
#: encoding/json folds onto the same field is decoded raw (without the patch).
_RAW_CONFIG = {
    "kill_timeout": DURATION,
    "env": Map(STRING),
    "processes": Map(STRING),
    "mounts": Slice(Struct("Mount", {**MOUNT.fields, "initial_size": STRING})),
    "services": Slice(
        Struct(
            "Service",
            {
                **SERVICE.fields,
                "internal_port": INT,
                "ports": Slice(MACHINE_PORT),
                "concurrency": CONCURRENCY_TABLE,
                "tcp_checks": Slice(SERVICE_TCP_CHECK),
                "http_checks": Slice(SERVICE_HTTP_CHECK),
            },
        )
    ),
    "checks": Map(Struct("ToplevelCheck", {**TOPLEVEL_CHECK.fields, **_CHECK_COMMON})),
    "vm": Slice(COMPUTE),
    "metrics": Slice(METRICS),
}


# -- the check -------------------------------------------------------------------------------


class TypeProblem(NamedTuple):
    """A value flyctl cannot decode: where it is, what it is, what flyctl wants."""

    path: tuple  # of str keys and int array indexes, as in the TOML source
    value: Any
    expected: str


def type_problems(data: dict[str, Any]) -> list[TypeProblem]:
    """Every value of ``data`` (fly.toml as a plain dict) that flyctl's decoding refuses."""
    walker = _Walker()
    walker.struct(data, CONFIG, (), top=True)
    return walker.problems


_INT64 = 2**63
_DURATION_RE = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_ATOI_RE = re.compile(r"[-+]?\d+")
_TEXT = (str, _dt.datetime, _dt.date, _dt.time)  # go-toml's dates marshal as JSON strings


def go_duration_ok(text: str) -> bool:
    """Whether Go's time.ParseDuration accepts ``text`` ("0", "1h30m", "1.5s", "-2ms")."""
    return text in ("0", "+0", "-0") or _DURATION_RE.fullmatch(text) is not None


def _atoi_ok(text: str) -> bool:
    return _ATOI_RE.fullmatch(text) is not None and -_INT64 <= int(text) < _INT64


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_ok(value: Any, low: int, high: int) -> bool:
    """Whether json.Marshal's text of ``value`` decodes into a Go integer in [low, high)."""
    if isinstance(value, bool) or not _is_number(value):
        return False
    if isinstance(value, float):
        if not value.is_integer() or abs(value) >= 1e21:  # "1.5", "1e+21": not an integer
            return False
        if low == 0 and math.copysign(1.0, value) < 0:  # "-0" is no unsigned integer
            return False
    return low <= value < high


class _Walker:
    def __init__(self) -> None:
        self.problems: list[TypeProblem] = []

    def bad(self, path: tuple, value: Any, expected: str) -> None:
        self.problems.append(TypeProblem(path, value, expected))

    def struct(self, value: Any, struct: Struct, path: tuple, top: bool = False) -> None:
        if not isinstance(value, dict):
            self.bad(path, value, "a table")
            return
        fields = struct.fields
        folded = None
        for key, item in value.items():
            kind = fields.get(key)
            if kind is None:
                if folded is None:
                    folded = _folded(struct, top)
                kind = folded.get(key.lower()) if isinstance(key, str) else None
                if kind is None:  # a key no field declares: ignored, but still marshalled
                    self.finite(item, (*path, key))
                    continue
            self.value(item, kind, (*path, key))
        if top:
            self._experimental_moves(value)

    def _experimental_moves(self, data: dict[str, Any]) -> None:
        """patchExperimental moves kill_timeout and metrics_* up when the top level lacks them."""
        experimental = data.get("experimental")
        if not isinstance(experimental, dict):
            return
        if "kill_timeout" not in data and "kill_timeout" in experimental:
            self.value(
                experimental["kill_timeout"], CAST_DURATION, ("experimental", "kill_timeout")
            )
        if "metrics" not in data:
            for key, kind in (("metrics_port", INT), ("metrics_path", STRING)):
                if key in experimental:
                    self.value(experimental[key], kind, ("experimental", key))

    def finite(self, value: Any, path: tuple) -> None:
        """json.Marshal refuses NaN and ±Inf wherever they sit."""
        if isinstance(value, float):
            if not math.isfinite(value):
                self.bad(path, value, "a finite number (flyctl cannot encode NaN or Inf)")
        elif isinstance(value, dict):
            for key, item in value.items():
                self.finite(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.finite(item, (*path, i))

    def value(self, value: Any, kind: Any, path: tuple) -> None:
        if isinstance(kind, Struct):
            self.struct(value, kind, path)
        elif isinstance(kind, Slice):
            if not isinstance(value, list):
                self.bad(path, value, _array_of(kind.elem))
                return
            for i, item in enumerate(value):
                self.value(item, kind.elem, (*path, i))
        elif isinstance(kind, Map):
            if not isinstance(value, dict):
                self.bad(path, value, f"a table of {_name(kind.elem)} values")
                return
            for key, item in value.items():
                self.value(item, kind.elem, (*path, key))
        elif isinstance(kind, ArrayOfMap):
            if isinstance(value, dict):
                self.struct(value, kind.elem, path)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        self.struct(item, kind.elem, (*path, i))
                    else:
                        self.bad((*path, i), item, "a table")
            else:
                self.bad(path, value, "a table or an array of tables")
        else:
            self.scalar(value, kind, path)

    def scalar(self, value: Any, kind: Kind, path: tuple) -> None:
        ok: bool
        if kind is STRING:
            ok = isinstance(value, _TEXT)
        elif kind is INT:
            ok = _int_ok(value, -_INT64, _INT64)
        elif kind is UINT32:
            ok = _int_ok(value, 0, 2**32)
        elif kind is FLOAT:
            ok = _is_number(value) and math.isfinite(value)
        elif kind is BOOL:
            ok = isinstance(value, bool)
        elif kind is ANY or kind is CAST_STRING:
            if kind is ANY:
                self.finite(value, path)
            return
        elif kind is DURATION:
            ok = (_is_number(value) and math.isfinite(value)) or (
                isinstance(value, str) and go_duration_ok(value)
            )
        elif kind is CAST_DURATION:  # only a non-empty string survives the cast to be parsed
            ok = not isinstance(value, str) or value == "" or go_duration_ok(value)
        elif kind is AUTOSTOP:
            ok = isinstance(value, bool) or value in ("off", "stop", "suspend")
        elif kind is PERSIST_ROOTFS:
            ok = (
                isinstance(value, str) and value in ("", "none", "never", "restart", "always")
            ) or (_int_ok(value, 0, 4))
        elif kind is CAST_INT:
            ok = (isinstance(value, str) and _atoi_ok(value)) or _is_number(value)
        elif kind is STRING_OR_SLICE:
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
        elif kind is CONCURRENCY:
            if isinstance(value, dict):
                self.struct(value, CONCURRENCY_TABLE, path)
                return
            soft, comma, hard = value.partition(",") if isinstance(value, str) else ("", "", "")
            ok = bool(comma) and _atoi_ok(soft) and _atoi_ok(hard)
        elif kind is CHECK_HEADERS:
            if isinstance(value, list):
                ok = all(isinstance(h, dict) and "name" in h for h in value)
            else:
                ok = isinstance(value, dict)
        elif kind is ENV:
            ok = _env_ok(value)
        elif kind is PROCESSES:
            if isinstance(value, dict):
                self.value(value, Map(STRING), path)
                return
            ok = isinstance(value, list)  # [[processes]] tables; other items are dropped
        elif kind is TOP_CHECKS:
            self._top_checks(value, path)
            return
        else:  # pragma: no cover - a kind added to the table without its decoding
            raise AssertionError(kind)
        if not ok:
            self.bad(path, value, kind.expected)

    def _top_checks(self, value: Any, path: tuple) -> None:
        if isinstance(value, dict):
            for name, check in value.items():
                self.struct(check, TOPLEVEL_CHECK, (*path, name))
        elif isinstance(value, list):  # [[checks]] with a name each
            for i, check in enumerate(value):
                if isinstance(check, dict) and isinstance(check.get("name"), str):
                    self.struct(check, TOPLEVEL_CHECK, (*path, i))
                else:
                    self.bad((*path, i), check, "a table with a string `name`")
        else:
            self.bad(path, value, TOP_CHECKS.expected)


def _folded(struct: Struct, top: bool) -> dict[str, Any]:
    """encoding/json's case-insensitive names; at the top, only Go's fields and unpatched."""
    if not top:
        return {name.lower(): kind for name, kind in struct.fields.items()}
    go_fields = {k: v for k, v in struct.fields.items() if k not in _PATCH_ONLY_KEYS}
    return {**{k.lower(): v for k, v in go_fields.items()}, **_RAW_CONFIG}


def _env_ok(value: Any) -> bool:
    """_patchEnv: a table (values stringified), or arrays of tables, nested at will."""
    if isinstance(value, dict):
        return True
    if isinstance(value, list):
        return all(_env_ok(item) for item in value)
    return False


def _name(kind: Any) -> str:
    if isinstance(kind, Kind):
        return {"string": "string", "int": "integer", "bool": "boolean", "any": "any"}.get(
            kind.name, kind.name
        )
    return "table" if isinstance(kind, Struct) else "array"


def _array_of(elem: Any) -> str:
    if elem is STRING:
        return 'an array of strings, like ["app"]'
    if isinstance(elem, Struct):
        return "an array of tables"
    return f"an array of {_name(elem)} values"
