"""One batched probe per Machine: the command that runs it, and the facts it returns.

A flyctl session costs seconds, so volguard never pays it per assertion: the
probe program (probe_script.py) gathers everything in one session and prints
JSON between markers, which keeps flyctl's own chatter out of the result. The
command carries the program and its arguments base64-encoded, so nothing in
them can be reinterpreted by a shell, and ends with an exit-status sentinel
because `fly ssh console` collapses every remote failure to exit 1.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from volguard.errors import ProbeError
from volguard.remote.probe_script import PROBE_SOURCE

BEGIN, END = "__VOLGUARD_FACTS_BEGIN__", "__VOLGUARD_FACTS_END__"
RC_SENTINEL = "__VOLGUARD_RC="
#: The image's own interpreters first: the probe needs only the standard library, and a
#: `python3` found on PATH may be a slow wrapper (pyenv's shim costs ~80 ms).
_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3", "python3", "/app/.venv/bin/python3")


def probe_script(arguments: dict[str, Any]) -> str:
    """A POSIX sh script that runs the probe with the Machine's python3 and prints its status."""
    source = base64.b64encode(PROBE_SOURCE.encode()).decode()
    args = base64.b64encode(json.dumps(arguments, sort_keys=True).encode()).decode()
    loader = (
        "import base64,sys;exec(compile(base64.b64decode(sys.argv[1]),'volguard-probe','exec'))"
    )
    candidates = " ".join(shlex.quote(p) for p in _PYTHONS)
    return (
        f"for p in {candidates}; do "
        'if command -v "$p" >/dev/null 2>&1; then '
        f'"$p" -c {shlex.quote(loader)} {source} {args}; rc=$?; '
        f'echo "{RC_SENTINEL}$rc"; exit 0; fi; done; '
        'echo "volguard: no python3 on this Machine" >&2; '
        f'echo "{RC_SENTINEL}127"'
    )


def exit_status(stdout: str) -> int | None:
    """The probe's own exit status from its sentinel line, or None when it never printed one."""
    found = re.findall(rf"^{re.escape(RC_SENTINEL)}(\d+)\s*$", stdout, flags=re.MULTILINE)
    return int(found[-1]) if found else None


def parse_facts(stdout: str) -> dict[str, Any]:
    """The JSON object between the markers; ProbeError when there is none."""
    start, end = stdout.rfind(BEGIN), stdout.rfind(END)
    if start < 0 or end < start:
        raise ProbeError("the probe printed no result")
    try:
        data = json.loads(stdout[start + len(BEGIN) : end])
    except ValueError as e:
        raise ProbeError(f"the probe's result is not JSON ({e})") from None
    except RecursionError:  # nested deeper than the decoder's stack: no probe writes that
        raise ProbeError("the probe's result is not JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ProbeError("the probe's result is not a JSON object")
    return data


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fstype: str
    options: tuple[str, ...]
    super_options: tuple[str, ...] = ()
    source: str = ""

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options


@dataclass(frozen=True)
class AppProcess:
    pid: int
    user: str
    cwd: str
    command: str
    media_root: str | None
    group: str | None


@dataclass(frozen=True)
class MachineFacts:
    """What one probe saw on one Machine."""

    destination: str
    destination_exists: bool
    destination_device: str | None
    root_device: str | None
    mount: MountEntry | None
    bytes_total: int | None = None
    bytes_free: int | None = None
    inodes_total: int | None = None
    inodes_free: int | None = None
    processes: tuple[AppProcess, ...] = ()
    app_user: str | None = None
    media_root: str | None = None
    media_root_source: str | None = None
    media_root_real: str | None = None
    media_root_exists: bool | None = None
    media_root_owner: str | None = None
    media_root_mode: str | None = None
    media_root_device: str | None = None
    write_test: dict[str, Any] | None = None
    visibility_probe: str | None = None
    visible: dict[str, bool] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    #: where Django's default storage writes, when manage_py answered: backend, writes_to
    #: (FallbackStorage's primary), filesystem (a FileSystemStorage: the volume), fallback
    media_storage: dict[str, Any] | None = None
    #: BUCKET_NAME and AWS_ENDPOINT_URL_S3 from the app process's environment (evidence)
    object_storage_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_probe(cls, data: dict[str, Any]) -> MachineFacts:
        """The facts as the probe sent them; ProbeError when it says it failed.

        Never raises for a fact of the wrong type: such a value is kept as it came, not
        coerced, so the rules see it and report VG310 instead of judging it.
        """
        errors = _sequence(data.get("errors"))
        errors = tuple(errors) if isinstance(errors, tuple) else (_one_line(errors),)
        if data.get("fatal"):
            why = "; ".join(_one_line(e) for e in errors) if errors else "the probe failed"
            raise ProbeError(why)
        mount = data.get("mount")
        processes = _sequence(data.get("processes"))
        visible = data.get("visible")
        return cls(
            destination=data.get("destination", ""),
            destination_exists=data.get("destination_exists"),  # missing: None, not False
            destination_device=data.get("destination_device"),
            root_device=data.get("root_device"),
            mount=MountEntry(
                mount_point=mount.get("mount_point", ""),
                fstype=mount.get("fstype", ""),
                options=_sequence(mount.get("options")),
                super_options=_sequence(mount.get("super_options")),
                source=mount.get("source", ""),
            )
            if isinstance(mount, dict)
            else mount,
            bytes_total=data.get("bytes_total"),
            bytes_free=data.get("bytes_free"),
            inodes_total=data.get("inodes_total"),
            inodes_free=data.get("inodes_free"),
            processes=tuple(
                AppProcess(
                    pid=p.get("pid", 0),
                    user=p.get("user", ""),
                    cwd=p.get("cwd", ""),
                    command=p.get("command", ""),
                    media_root=p.get("media_root"),
                    group=p.get("group"),
                )
                for p in processes
                if isinstance(p, dict)  # as before: an entry that is not an object is no process
            )
            if isinstance(processes, tuple)
            else processes,
            app_user=data.get("app_user"),
            media_root=data.get("media_root"),
            media_root_source=data.get("media_root_source"),
            media_root_real=data.get("media_root_real"),
            media_root_exists=data.get("media_root_exists"),
            media_root_owner=data.get("media_root_owner"),
            media_root_mode=data.get("media_root_mode"),
            media_root_device=data.get("media_root_device"),
            write_test=data.get("write_test"),
            visibility_probe=data.get("visibility_probe"),
            visible={} if visible is None else visible,
            errors=errors,
            media_storage=data.get("media_storage"),
            object_storage_env=data.get("object_storage_env") or {},
        )

    @property
    def storage(self) -> str | None:
        """Where the running app writes uploads, as Django says: "volume", "object", or None
        when Django was not asked or did not say (the environment alone never decides)."""
        answer = self.media_storage
        if not isinstance(answer, dict) or not isinstance(answer.get("filesystem"), bool):
            return None
        return "volume" if answer["filesystem"] else "object"

    @property
    def separate_filesystem(self) -> bool:
        """The destination is on its own filesystem: a device other than the root's."""
        return (
            self.destination_exists
            and self.destination_device is not None
            and self.destination_device != self.root_device
        )


def _sequence(value: Any) -> Any:
    """A JSON array as a tuple, null as (); anything else as it came (the rules flag it)."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else value


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())[:500]


# -- the manage mode (`volguard remediate`) ------------------------------------------------

#: How much of a manage.py command's stdout the probe brings back (its stderr: the last 64 KiB).
MANAGE_MAX_OUTPUT = 16 << 20


def manage_arguments(
    argv: list[str],
    *,
    manage_py: str,
    group: str | None,
    app_user: str | None = None,
    make_dirs: tuple[str, ...] = (),
    timeout: float = 900.0,
    max_output: int = MANAGE_MAX_OUTPUT,
) -> dict[str, Any]:
    """The probe's arguments for running ``manage_py`` + ``argv`` as the app user.

    ``manage_py`` is split like a command line (``python3 manage.py``) on the Machine, never
    given to a shell; ``make_dirs`` are created by root for the app user when missing.
    """
    return {
        "manage": {
            "argv": list(argv),
            "manage_py": manage_py,
            "group": group,
            "app_user": app_user,
            "make_dirs": list(make_dirs),
            "timeout": timeout,
            "max_output": max_output,
        }
    }


@dataclass(frozen=True)
class ManageRun:
    """What one manage.py command did on a Machine, as the app user."""

    returncode: int | None
    stdout: str
    stderr: str
    user: str
    cwd: str
    pid: int
    argv: tuple[str, ...] = ()
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    errors: tuple[str, ...] = ()

    @classmethod
    def from_probe(cls, data: dict[str, Any]) -> ManageRun:
        """The probe's answer; ProbeError when it could not run the command at all."""
        errors = tuple(str(e) for e in data.get("errors") or ())
        result = data.get("manage")
        if data.get("fatal") or not isinstance(result, dict):
            raise ProbeError("; ".join(errors) or "the probe did not run manage.py")
        if result.get("returncode") is None:
            raise ProbeError("; ".join(errors) or "manage.py did not finish")
        return cls(
            returncode=int(result["returncode"]),
            stdout=str(result.get("stdout") or ""),
            stderr=str(result.get("stderr") or ""),
            user=str(result.get("user") or ""),
            cwd=str(result.get("cwd") or ""),
            pid=int(result.get("pid") or 0),
            argv=tuple(str(a) for a in result.get("argv") or ()),
            stdout_truncated=bool(result.get("stdout_truncated")),
            stderr_truncated=bool(result.get("stderr_truncated")),
            errors=errors,
        )

    def last_error_line(self) -> str:
        """The last non-blank line of stderr (a CommandError, a traceback's last line)."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1][:500] if lines else f"exit status {self.returncode}"
