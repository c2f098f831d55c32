"""volguard's own settings: the `volguard:` section of Invoke's configuration.

Composite settings default to None (Invoke cannot cast an environment variable
to a list or mapping, and would crash); lists also accept "a,b" strings.

Invoke merges, lowest first: defaults (`DEFAULTS` below, set on the task
collection), /etc/invoke.yaml, ~/.invoke.yaml, the project's invoke.yaml, the
environment (`INVOKE_VOLGUARD_FLY_TOML=...`), a runtime file (`-f`); flags
override all of them. `Settings.load()` validates the merged result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from invoke import Config

from volguard.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "fly_toml": "fly.toml",
    "app": None,  # default: fly.toml `app`
    "media_root": None,  # default: fly.toml [env] MEDIA_ROOT
    "media_groups": None,  # default: every process group
    "media_storage": "auto",  # auto | volume | object: where uploads live (docs/checks.md#vg115)
    "min_snapshot_retention": 5,
    "snapshot_max_age_hours": 48,  # VG207: daily snapshots, a day of slack
    "volume_full_percent": 90,  # VG208
    # the Machine layer (issue #4)
    "transport": "fly",  # fly | ssh | local
    "flyctl": "flyctl",
    "ssh_user": "root",
    "ssh_config": None,
    "host_template": "{id}.vm.{app}.internal",
    "app_user": None,  # default: the user the app process runs as
    "manage_py": None,  # e.g. "python /app/manage.py": ask Django for MEDIA_ROOT
    "volume_fstypes": None,  # VG302; default ext4 (Fly volumes are ext4)
    "min_free_percent": 10,  # VG305
    "probe_ttl": 300,  # seconds before a left-over visibility probe removes itself
    "machine_parallel": 8,
    "checks_dirs": None,  # your own testinfra modules, besides volguard's; default checks/
    "waivers": None,
}
#: Every key Settings accepts. `machine_counts` is left out of DEFAULTS (what Invoke is given):
#: Invoke refuses to merge a file's mapping over a default that is not one (None), and an
#: empty mapping would refuse a file's `null` instead.
KNOWN: dict[str, Any] = {
    **DEFAULTS,
    "machine_counts": None,  # VG112: Machines you intend to run per group
}


#: `media_storage`: `volume` (uploads on Fly volumes: every volume check applies), `object`
#: (uploads in object storage: the volume checks for media are skipped, and say so), `auto`
#: (volume for lint; verify-volume asks the running app's Django when manage_py is set).
MEDIA_STORAGES = ("auto", "volume", "object")


class Waiver(NamedTuple):
    """A decision to accept a finding: ids, why, until when, and where it applies."""

    ids: tuple[str, ...]
    reason: str
    until: dt.date | None = None
    file: str | None = None  # config waivers: only findings in this file
    line: int | None = None  # inline waivers: only findings on this line
    origin: str = ""  # where the waiver was written, for messages

    def expired(self, today: dt.date) -> bool:
        return self.until is not None and today > self.until


@dataclass(frozen=True)
class Settings:
    fly_toml: str = "fly.toml"
    app: str | None = None
    media_root: str | None = None
    media_groups: tuple[str, ...] | None = None
    media_storage: str = "auto"
    min_snapshot_retention: int = 5
    machine_counts: dict[str, int] = field(default_factory=dict)
    snapshot_max_age_hours: int = 48
    volume_full_percent: int = 90
    transport: str = "fly"
    flyctl: str = "flyctl"
    ssh_user: str = "root"
    ssh_config: str | None = None
    host_template: str = "{id}.vm.{app}.internal"
    app_user: str | None = None
    manage_py: str | None = None
    volume_fstypes: tuple[str, ...] = ("ext4",)
    min_free_percent: int = 10
    probe_ttl: int = 300
    machine_parallel: int = 8
    checks_dirs: tuple[str, ...] = ("checks",)
    waivers: tuple[Waiver, ...] = ()

    @classmethod
    def load(cls, section: Mapping[str, Any] | None, **flags: Any) -> Settings:
        """Validate the `volguard:` config section, with non-None ``flags`` on top."""
        merged = dict(KNOWN)
        merged.update({k: v for k, v in dict(section or {}).items()})
        merged.update({k: v for k, v in flags.items() if v is not None})
        unknown = sorted(set(merged) - set(KNOWN), key=str)
        if unknown:
            raise ConfigError(
                f"volguard config: unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN))})"
            )
        return cls(
            fly_toml=_str(merged, "fly_toml") or "fly.toml",
            app=_str(merged, "app") or None,
            media_root=_str(merged, "media_root") or None,
            media_groups=_groups(merged["media_groups"]),
            media_storage=_choice(merged, "media_storage", MEDIA_STORAGES),
            min_snapshot_retention=_int(merged, "min_snapshot_retention", 1, 60),
            machine_counts=_counts(merged["machine_counts"]),
            snapshot_max_age_hours=_int(merged, "snapshot_max_age_hours", 1, 24 * 366),
            volume_full_percent=_int(merged, "volume_full_percent", 1, 100),
            transport=_choice(merged, "transport", ("fly", "ssh", "local")),
            flyctl=_str(merged, "flyctl") or "flyctl",
            ssh_user=_str(merged, "ssh_user") or "root",
            ssh_config=_str(merged, "ssh_config") or None,
            host_template=_template(merged),
            app_user=_str(merged, "app_user") or None,
            manage_py=_str(merged, "manage_py") or None,
            volume_fstypes=_names(merged, "volume_fstypes") or ("ext4",),
            min_free_percent=_int(merged, "min_free_percent", 0, 100),
            probe_ttl=_int(merged, "probe_ttl", 1, 86400),
            machine_parallel=_int(merged, "machine_parallel", 1, 64),
            checks_dirs=_names(merged, "checks_dirs") or ("checks",),
            waivers=tuple(_waiver(w, i) for i, w in enumerate(_list(merged, "waivers"))),
        )


def _str(merged: dict[str, Any], key: str) -> str | None:
    value = merged[key]
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"volguard config: {key} must be a string, not {value!r}")


def _choice(merged: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = merged[key]
    if value not in choices:
        raise ConfigError(
            f"volguard config: {key} must be one of {', '.join(choices)}, not {value!r}"
        )
    return value


def _names(merged: dict[str, Any], key: str) -> tuple[str, ...]:
    value = merged[key]
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"volguard config: {key} must be a list of names, not {value!r}")
    return tuple(n.strip() for n in names if n.strip())


def _template(merged: dict[str, Any]) -> str:
    value = _str(merged, "host_template") or "{id}.vm.{app}.internal"
    try:
        value.format(id="x", app="x", region="x", group="x", name="x", private_ip="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"volguard config: host_template {value!r} is not a valid template ({e}); "
            "use {id}, {app}, {region}, {group}, {name} or {private_ip}"
        ) from None
    return value


def _int(merged: dict[str, Any], key: str, low: int, high: int) -> int:
    value = merged[key]
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"volguard config: {key} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"volguard config: {key} must be between {low} and {high}, not {number}")
    return number


def _list(merged: dict[str, Any], key: str) -> list[Any]:
    value = merged[key]
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    raise ConfigError(f"volguard config: {key} must be a list, not {value!r}")


def _groups(value: Any) -> tuple[str, ...] | None:
    """`media_groups`: a list, or a comma-separated string (flags, environment)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",")]
    elif isinstance(value, list | tuple) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
    else:
        raise ConfigError(f"volguard config: media_groups must be a list of names, not {value!r}")
    if not all(names):
        raise ConfigError(f"volguard config: media_groups has an empty name in {value!r}")
    return tuple(dict.fromkeys(names))


def _counts(value: Any) -> dict[str, int]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"volguard config: machine_counts must be a mapping, not {value!r}")
    out = {}
    for group, count in value.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigError(
                f"volguard config: machine_counts.{group} must be a whole number, not {count!r}"
            )
        out[str(group)] = count
    return out


def _waiver(raw: Any, index: int) -> Waiver:
    origin = f"volguard config: waivers[{index}]"
    if isinstance(raw, LocatedDict):  # read from a file: name it and the line
        origin = f"{raw.where()}: waivers[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin} must be a mapping with id and reason, not {raw!r}")
    unknown = sorted(set(raw) - {"id", "reason", "until", "file"})
    if unknown:
        raise ConfigError(f"{origin}: unknown key {unknown[0]!r} (id, reason, until, file)")
    ids = raw.get("id")
    ids = [ids] if isinstance(ids, str) else ids
    if not ids or not all(isinstance(i, str) for i in ids):
        raise ConfigError(f"{origin} needs an id such as VG110")
    return Waiver(
        ids=tuple(check_id_or_error(i, origin) for i in ids),
        reason=reason_or_error(raw.get("reason"), origin),
        until=date_or_error(
            raw.get("until"),
            f"{raw.where('until')}: waivers[{index}]" if isinstance(raw, LocatedDict) else origin,
        ),
        file=raw.get("file"),
        origin=origin,
    )


def check_id_or_error(value: str, origin: str) -> str:
    from volguard.catalogue import CHECKS

    check_id = value.strip().upper()
    if check_id not in CHECKS:
        raise ConfigError(f"{origin}: unknown check id {value!r}")
    return check_id


def reason_or_error(value: Any, origin: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f'{origin}: a waiver needs a reason="…"')
    return value.strip()


def date_or_error(value: Any, origin: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f"{origin}: until={value!r} is not a date like 2027-03-01") from None


# -- reading invoke.yaml --------------------------------------------------------------------


class InvokeConfig(Config):
    """Invoke's configuration, with YAML files (invoke.yaml, -f/--config) read by `load_yaml`."""

    def _load_yaml(self, path: Any) -> Any:
        return load_yaml(str(path))

    _load_yml = _load_yaml


class LocatedDict(dict):
    """A mapping read from a YAML file that remembers where it and each of its keys were."""

    path: str = ""
    line: int = 0
    key_lines: dict[Any, int]

    def where(self, key: Any = None) -> str:
        """``file:line`` of ``key`` (or of the mapping itself) for messages."""
        lines = getattr(self, "key_lines", {})
        return f"{self.path}:{lines.get(key, self.line) if key is not None else self.line}"


def load_yaml(path: str) -> Any:
    """``path`` as YAML, the way volguard reads invoke.yaml; ConfigError naming file and line.

    Unlike PyYAML's safe_load, a value that looks like a date stays a string (``until:
    2027-02-30`` would otherwise crash inside the YAML reader, before volguard can say which
    file and line), a key given twice is refused, and mappings remember their lines.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def mapping(loader: Loader, node: yaml.MappingNode) -> LocatedDict:
        out = LocatedDict()
        out.path, out.line, out.key_lines = path, node.start_mark.line + 1, {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in out
            except TypeError:  # an unhashable key, e.g. a list
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: a key must be a name"
                ) from None
            if duplicate:
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: {key!r} given twice")
            out[key] = loader.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(problem).split())})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
