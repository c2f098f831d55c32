"""fly.toml, read the way flyctl reads it (fly-facts §1), into a `FlyConfig`.

`read_fly_toml()` never raises for a bad file: what cannot be read or has the
wrong type becomes a VG100 finding, and the parts that could be read still
form a model so the other rules can speak.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from volguard.catalogue import finding
from volguard.findings import Finding, Location
from volguard.flyctl_types import type_problems
from volguard.tomlsource import Path, SourceMap

#: Larger than any real fly.toml by three orders of magnitude; a guard against
#: pointing the linter at a log file or a disk image.
MAX_BYTES = 1024 * 1024

DEFAULT_GROUP = "app"  # fly.MachineProcessGroupApp


class Mount(NamedTuple):
    """One `[[mounts]]` entry."""

    source: str
    destination: str
    processes: tuple[str, ...]
    key: Path  # where it sits in the file, e.g. ("mounts", 0)
    initial_size: str | None = None
    snapshot_retention: int | None = None
    scheduled_snapshots: bool | None = None
    auto_extend_size_threshold: int | None = None
    auto_extend_size_increment: str | None = None
    auto_extend_size_limit: str | None = None

    @property
    def label(self) -> str:
        return f'mount "{self.source}" -> {self.destination}'


class Service(NamedTuple):
    """An `[http_service]` or `[[services]]` entry, as far as volume rules care."""

    processes: tuple[str, ...]
    min_machines_running: int | None
    key: Path


#: The fields of FLYGO machine_types.go `MachineGuest` @22d6e518 that describe the size a
#: host must fit, with their JSON/TOML types, as a `[[vm]]` section and the API's Machine
#: config both carry them. All are `omitempty`: a zero means "not set".
GUEST_FIELDS: dict[str, type] = {
    "cpu_kind": str,
    "cpus": int,
    "memory_mb": int,
    "max_memory_mb": int,
    "gpus": int,
    "gpu_kind": str,
    "host_dedication_id": str,
}


class Compute(NamedTuple):
    """One `[[vm]]` section (also spelt `[[compute]]`/`[[computes]]`, merged by flyctl's
    patchCompute in that order: compute, computes, vm)."""

    size: str  # a preset name ("shared-cpu-2x"); "" when not set
    memory: str  # "1gb", "512" (MiB); "" when not set
    guest: dict[str, Any]  # the GUEST_FIELDS the section sets, with their values
    processes: tuple[str, ...]
    key: Path


@dataclass(frozen=True)
class FlyConfig:
    path: str
    source_map: SourceMap
    app: str | None = None
    primary_region: str | None = None
    processes: dict[str, str] = field(default_factory=dict)  # group -> command ("" = image CMD)
    mounts: tuple[Mount, ...] = ()
    mounts_declared: bool = False  # a mount/mounts key exists, even if no entry was usable
    env: dict[str, str] = field(default_factory=dict)
    deploy_strategy: str | None = None
    release_command: str | None = None
    services: tuple[Service, ...] = ()
    computes: tuple[Compute, ...] = ()  # [[vm]] sections; volguard.fly.guest reads them
    host_dedication_id: str | None = None

    @property
    def group_names(self) -> list[str]:
        """Process groups, sorted like flyctl's ProcessNames(); no [processes] means `app`."""
        return sorted(self.processes) or [DEFAULT_GROUP]

    @property
    def default_group(self) -> str:
        """flyctl's DefaultProcessName(): `app` if present, else the first name."""
        names = self.group_names
        return DEFAULT_GROUP if DEFAULT_GROUP in names else names[0]

    def groups_of(self, mount: Mount) -> list[str]:
        """The groups a mount reaches: its `processes`, or only the default group when empty."""
        if not mount.processes:
            return [self.default_group]
        return [g for g in self.group_names if g in mount.processes]

    def mounts_of(self, group: str) -> list[Mount]:
        return [m for m in self.mounts if group in self.groups_of(m)]

    def locate(self, *path: Any) -> Location:
        pos = self.source_map.position(tuple(path))
        if pos is None:
            return Location(file=self.path)
        return Location(file=self.path, line=pos[0], column=pos[1])


def read_fly_toml(path: str) -> tuple[FlyConfig | None, list[Finding]]:
    """Read and model ``path``. Returns (None, [VG100]) when nothing usable could be read."""
    text, problem = _read_text(path)
    if problem is not None:
        return None, [problem]
    return parse_fly_toml(text, path)


def parse_fly_toml(text: str, path: str = "fly.toml") -> tuple[FlyConfig | None, list[Finding]]:
    """Model fly.toml given as text (already decoded, BOM removed)."""
    import tomlkit  # deferred: the import costs as much as the rest of a lint run
    from tomlkit.exceptions import ParseError, TOMLKitError

    try:
        data = tomlkit.parse(text).unwrap()
    except (TOMLKitError, ValueError, RecursionError) as e:
        # tomllib (stdlib) points at the offending spot more precisely (a duplicate table's
        # header, 1-based columns); tomlkit's own position is the fallback.
        where = _locate_with_tomllib(text, path)
        if where.line is None and isinstance(e, ParseError):
            where = Location(file=path, line=e.line, column=e.col + 1)
        reason = str(e).split(" at line ")[0]
        return None, [_unparseable(path, where, reason)]
    builder = _Builder(path, SourceMap(text))
    try:
        problems = type_problems(data)
    except RecursionError:  # nested deeper than the walk's stack: no flyctl loads that either
        return None, [_unparseable(path, Location(file=path), "nested too deeply")]
    for problem in problems:  # flyctl's own decoding first: its verdict is the file's
        builder._wrong(problem.path, problem.value, problem.expected)
    return builder.build(data)


# -- reading the bytes ------------------------------------------------------------------


def _read_text(path: str) -> tuple[str, Finding | None]:
    where = Location(file=path)
    try:
        if os.path.isdir(path):
            return "", _unreadable(path, where, "is a directory, not a file")
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            return "", _unreadable(
                path, where, f"is {size:,} bytes; volguard reads at most {MAX_BYTES:,}"
            )
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return "", _unreadable(path, where, "does not exist")
    except PermissionError:
        return "", _unreadable(path, where, "cannot be read: permission denied")
    except OSError as e:
        return "", _unreadable(path, where, f"cannot be read: {e.strerror or e}")
    nul = raw.find(b"\0")
    if nul >= 0:
        line, col = _line_col(raw, nul)
        return "", _unreadable(path, Location(path, line, col), "is binary, not TOML (NUL byte)")
    try:
        return raw.decode("utf-8-sig"), None  # flyctl tolerates a UTF-8 BOM
    except UnicodeDecodeError as e:
        line, col = _line_col(raw, e.start)
        return "", _unreadable(
            path, Location(path, line, col), f"is not UTF-8 (byte 0x{raw[e.start]:02x})"
        )


def _line_col(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    col = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _unreadable(path: str, where: Location, why: str) -> Finding:
    return finding("VG100", f"{path} {why}", where, hint="Point volguard at the app's fly.toml.")


def _unparseable(path: str, where: Location, why: str) -> Finding:
    at = f" at line {where.line}, column {where.column}" if where.line else ""
    return finding(
        "VG100",
        f"{path} is not valid TOML{at}: {why}",
        where,
        hint="Fix the TOML syntax; flyctl cannot load this file either.",
    )


def _locate_with_tomllib(text: str, path: str) -> Location:
    import tomllib

    try:
        tomllib.loads(text)
    except RecursionError:  # nesting deeper than the parser's stack: no position to give
        return Location(file=path)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+), column (\d+)", str(e))
        if m:
            return Location(file=path, line=int(m.group(1)), column=int(m.group(2)))
    return Location(file=path)


# -- building the model ------------------------------------------------------------------

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "a table",
    list: "an array",
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    if isinstance(value, float):
        return "a float"
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def go_string(value: Any) -> str:
    """How flyctl stringifies a non-string value (patchEnv, castToString: Go's %v)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def _go_float(value: float) -> str:
    """Go's %v for a float64: shortest digits, exponent form below 1e-4 or from 1e+06."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    from decimal import Decimal

    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    x = point - 1
    if x < -4 or x >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + text
    elif point >= len(text):
        out = text + "0" * (point - len(text))
    else:
        out = text[:point] + "." + text[point:]
    return ("-" if sign else "") + out


class _Builder:
    def __init__(self, path: str, source_map: SourceMap) -> None:
        self.path = path
        self.source_map = source_map
        self.findings: list[Finding] = []
        self.wrong: set[Path] = set()  # paths already reported, so each value speaks once
        self.problems = 0  # values found unusable, reported or not

    def build(self, data: dict[str, Any]) -> tuple[FlyConfig, list[Finding]]:
        deploy = self._table(data, ("deploy",)) or {}
        config = FlyConfig(
            path=self.path,
            source_map=self.source_map,
            app=self._str(data, ("app",)),
            primary_region=self._str(data, ("primary_region",)),
            processes=self._processes(data),
            mounts=tuple(self._mounts(data)),
            mounts_declared="mounts" in data or "mount" in data,
            env=self._env(data),
            deploy_strategy=self._str(deploy, ("deploy", "strategy")),
            release_command=self._str(deploy, ("deploy", "release_command")),
            services=tuple(self._services(data)),
            computes=tuple(self._computes(data)),
            host_dedication_id=self._str(data, ("host_dedication_id",)),
        )
        return config, self.findings

    # -- helpers

    def _where(self, key: Path) -> Location:
        pos = self.source_map.position(key)
        return Location(self.path, *pos) if pos else Location(self.path)

    def _wrong(self, key: Path, value: Any, expected: str) -> None:
        """VG100 at the offending value: flyctl drops the whole file for it (flyctl_types)."""
        self.problems += 1
        key = tuple(key)
        if any(_overlap(key, seen) for seen in self.wrong):  # e.g. a list and one of its items
            return
        self.wrong.add(key)
        dotted = ".".join(str(k) for k in key if not isinstance(k, int))
        pos = self.source_map.value_position(key)
        self.findings.append(
            finding(
                "VG100",
                f"{self.path}: `{dotted}` must be {expected}, not {_type_name(value)} "
                f"({_short(value)}); flyctl cannot load this file and keeps only its app name",
                Location(self.path, *pos) if pos else Location(self.path),
                hint=f"Write `{key[-1]}` as {expected}.",
                evidence={"key": dotted, "value": _short(value)},
            )
        )

    def _get(self, table: dict[str, Any], key: Path) -> Any:
        return table.get(key[-1])

    def _str(self, table: dict[str, Any], key: Path) -> str | None:
        value = self._get(table, key)
        if value is None or isinstance(value, str):
            return value
        self._wrong(key, value, "a string")
        return None

    def _int(self, table: dict[str, Any], key: Path) -> int | None:
        value = self._get(table, key)
        if value is None or _is_int(value):
            return value
        self._wrong(key, value, "an integer")
        return None

    def _bool(self, table: dict[str, Any], key: Path) -> bool | None:
        value = self._get(table, key)
        if value is None or isinstance(value, bool):
            return value
        self._wrong(key, value, "true or false")
        return None

    def _size(self, table: dict[str, Any], key: Path, cast: bool = False) -> str | None:
        """A size string; with ``cast``, a number too (patchMounts casts only initial_size)."""
        value = self._get(table, key)
        if value is None or isinstance(value, str):
            return value
        if cast and isinstance(value, int | float) and not isinstance(value, bool):
            return go_string(value)
        expected = 'a size such as "10gb"' + (" or a number of GB" if cast else "")
        self._wrong(key, value, expected)
        return None

    def _table(self, table: dict[str, Any], key: Path) -> dict[str, Any] | None:
        value = self._get(table, key)
        if value is None or isinstance(value, dict):
            return value
        self._wrong(key, value, "a table")
        return None

    def _str_list(self, table: dict[str, Any], key: Path) -> tuple[str, ...]:
        value = self._get(table, key)
        if value is None:
            return ()
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        self._wrong(key, value, 'an array of strings, like ["app"]')
        return ()

    # -- sections

    def _processes(self, data: dict[str, Any]) -> dict[str, str]:
        value = data.get("processes")
        if value is None:
            return {}
        if isinstance(value, list):
            # legacy: `processes = []` (ignored) or [[processes]] name=/command= tables
            groups: dict[str, str] = {}
            for i, item in enumerate(value):
                key = ("processes", i)
                if not isinstance(item, dict):
                    continue  # flyctl's patchProcesses keeps only the tables of an array
                name = self._str(item, (*key, "name"))
                command = self._str(item, (*key, "command"))
                if name:
                    groups[name] = command or ""
            return groups
        if not isinstance(value, dict):
            self._wrong(("processes",), value, "a table of group = command")
            return {}
        groups = {}
        for name, command in value.items():
            if isinstance(command, str):
                groups[name] = command
            else:
                self._wrong(("processes", name), command, "a command string")
                groups[name] = ""  # the group still exists for flyctl-like grouping
        return groups

    def _env(self, data: dict[str, Any]) -> dict[str, str]:
        raw = data.get("env")
        if isinstance(raw, list) and all(isinstance(t, dict) for t in raw):
            env = {k: v for table in raw for k, v in table.items()}  # [[env]]: later keys win
        else:
            env = self._table(data, ("env",)) or {}
        return {k: v if isinstance(v, str) else go_string(v) for k, v in env.items()}

    def _computes(self, data: dict[str, Any]) -> list[Compute]:
        """flyctl's patchCompute: `compute`, `computes`, `vm`, each a table or an array of
        tables, `memory` cast to a string. A value of the wrong type is VG100 from the type
        check (flyctl_types) and is left out here."""
        computes = []
        for name in ("compute", "computes", "vm"):
            value = data.get(name)
            entries = [value] if isinstance(value, dict) else value
            if not isinstance(entries, list):
                continue
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    continue
                memory = entry.get("memory")
                processes = entry.get("processes")
                computes.append(
                    Compute(
                        size=entry["size"] if isinstance(entry.get("size"), str) else "",
                        memory=go_string(memory) if memory is not None else "",
                        guest={
                            k: v
                            for k, kind in GUEST_FIELDS.items()
                            if isinstance(v := entry.get(k), kind) and not isinstance(v, bool)
                        },
                        processes=tuple(p for p in processes if isinstance(p, str))
                        if isinstance(processes, list)
                        else (),
                        key=(name, i) if isinstance(value, list) else (name,),
                    )
                )
        return computes

    def _mount_entries(self, data: dict[str, Any]) -> list[tuple[Path, Any]]:
        """flyctl's patchMounts: the legacy `mount` and `mounts`, each a table or array."""
        entries: list[tuple[Path, Any]] = []
        for name in ("mount", "mounts"):
            value = data.get(name)
            if value is None:
                continue
            if isinstance(value, dict):
                entries.append(((name,), value))
            elif isinstance(value, list):
                entries.extend(((name, i), item) for i, item in enumerate(value))
            else:
                self._wrong((name,), value, "a table ([mounts]) or an array of tables ([[mounts]])")
        return entries

    def _mounts(self, data: dict[str, Any]) -> list[Mount]:
        mounts = []
        for key, entry in self._mount_entries(data):
            if not isinstance(entry, dict):
                self._wrong(key, entry, "a table with `source` and `destination`")
                continue
            before = self.problems
            source = self._str(entry, (*key, "source"))
            destination = self._str(entry, (*key, "destination"))
            for required, value in (("source", source), ("destination", destination)):
                if value is None and required not in entry:
                    self.problems += 1
                    self.findings.append(
                        finding(
                            "VG100",
                            f"{self.path}: mount has no `{required}` (required by flyctl)",
                            self._where(key),
                            hint="Every mount needs `source` (the volume name) and "
                            "`destination` (the path in the Machine).",
                        )
                    )
            mount = Mount(
                source=source or "",
                destination=destination or "",
                processes=self._str_list(entry, (*key, "processes")),
                key=key,
                initial_size=self._size(entry, (*key, "initial_size"), cast=True),
                snapshot_retention=self._int(entry, (*key, "snapshot_retention")),
                scheduled_snapshots=self._bool(entry, (*key, "scheduled_snapshots")),
                auto_extend_size_threshold=self._int(entry, (*key, "auto_extend_size_threshold")),
                auto_extend_size_increment=self._size(entry, (*key, "auto_extend_size_increment")),
                auto_extend_size_limit=self._size(entry, (*key, "auto_extend_size_limit")),
            )
            if self.problems == before:  # a mount flyctl could not load is not modelled
                mounts.append(mount)
        return mounts

    def _services(self, data: dict[str, Any]) -> list[Service]:
        entries: list[tuple[Path, Any]] = []
        http = data.get("http_service")
        if http is not None:
            entries.append((("http_service",), http))
        services = data.get("services")
        if isinstance(services, dict):  # e.g. only [[services.ports]]: one service, as flyctl
            entries.append((("services",), services))
        elif isinstance(services, list):
            entries.extend((("services", i), s) for i, s in enumerate(services))
        elif services is not None:
            self._wrong(("services",), services, "an array of tables ([[services]])")
        out = []
        for key, entry in entries:
            if not isinstance(entry, dict):
                self._wrong(key, entry, "a table")
                continue
            out.append(
                Service(
                    processes=self._str_list(entry, (*key, "processes")),
                    min_machines_running=self._int(entry, (*key, "min_machines_running")),
                    key=key,
                )
            )
        return out


def _overlap(a: Path, b: Path) -> bool:
    """Whether one path is the other or lies inside it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
