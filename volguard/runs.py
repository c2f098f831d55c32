"""Run records: what a runbook run did, step by step, as JSON under ``.volguard/runs/``.

A runbook (`invoke deploy`, `invoke remediate`) is a list of named steps. Each step ends
``ok`` (nothing to change), ``changed`` (it changed something), ``failed`` or ``skipped``
(with the reason); the record keeps the tool version, the fly.toml's SHA-256, each step's
result, timing and details, and is rewritten atomically after every step, so a run killed
midway still says how far it got.

``--resume`` starts a new record from the latest one of the same runbook and app: steps
that ended ok/changed/skipped are carried over, and the run continues from the first step
that did not. It refuses when fly.toml changed since, because the carried-over results
would be about another configuration.

`RunLock` keeps two runs of the same app from overlapping (an exclusive ``flock`` on
``.volguard/runs/<app>.lock``, released by the kernel when the process dies, so a crash
never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from volguard import __version__

# StepFailed is raised by the runbooks after ``step.failed(…)``: importable from here too.
from volguard.errors import LockedError, UsageError
from volguard.errors import StepFailed as StepFailed
from volguard.masking import mask_url_passwords
from volguard.safeio import read_regular
from volguard.terminal import printable

RUNS_DIR = os.path.join(".volguard", "runs")
OK, CHANGED, FAILED, SKIPPED, PENDING = "ok", "changed", "failed", "skipped", "pending"
#: Statuses a resumed run does not repeat.
DONE = frozenset({OK, CHANGED, SKIPPED})
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Step:
    """One step's result: ``status`` is ok / changed / failed / skipped / pending."""

    name: str
    status: str = PENDING
    summary: str = ""
    started: str | None = None
    seconds: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    carried_over: bool = False

    def changed(self, summary: str = "") -> None:
        self.status, self.summary = CHANGED, summary or self.summary

    def ok(self, summary: str = "") -> None:
        self.status, self.summary = OK, summary or self.summary

    def skipped(self, why: str) -> None:
        self.status, self.summary = SKIPPED, why

    def failed(self, why: str) -> None:
        self.status, self.summary = FAILED, why


@dataclass
class RunRecord:
    kind: str
    app: str
    id: str
    path: str
    fly_toml: str | None = None
    fly_toml_sha256: str | None = None
    version: str = __version__
    started: str = ""
    finished: str | None = None
    status: str = "running"
    resumed_from: str | None = None
    steps: list[Step] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Not a field (never written): held by `save` and by whoever changes the record from
        # another thread (recover's copy: the receiving session's results, and the ledger
        # of a temporary Machine made meanwhile), so a save never walks a dict mid-change.
        self.lock = threading.RLock()

    # -- making one -----------------------------------------------------------------------

    @classmethod
    def new(
        cls,
        kind: str,
        app: str,
        steps: Sequence[str],
        *,
        fly_toml: str | None = None,
        runs_dir: str = RUNS_DIR,
        options: dict[str, Any] | None = None,
        mask: Callable[[str], str] | None = None,
    ) -> RunRecord:
        now = _now()
        # Microseconds and the pid: unique per run, and in start order when sorted.
        run_id = f"{kind}-{_safe(app)}-{now.strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}"
        record = cls(
            kind=kind,
            app=app,
            id=run_id,
            path=os.path.join(runs_dir, f"{run_id}.json"),
            fly_toml=fly_toml,
            fly_toml_sha256=file_sha256(fly_toml) if fly_toml else None,
            started=now.isoformat(timespec="microseconds"),
            steps=[Step(name) for name in steps],
            options=dict(options or {}),
        )
        if mask is not None:
            record.mask = mask
        record.save()
        return record

    @classmethod
    def resume(
        cls,
        kind: str,
        app: str,
        steps: Sequence[str],
        *,
        fly_toml: str | None = None,
        runs_dir: str = RUNS_DIR,
        options: dict[str, Any] | None = None,
        mask: Callable[[str], str] | None = None,
    ) -> RunRecord:
        """A new record that carries over the done steps of the latest ``kind`` run of ``app``."""
        previous = latest(kind, app, runs_dir)
        if previous is None:
            raise UsageError(f"--resume: no earlier {kind} run of {app} in {runs_dir}")
        if previous.status == "succeeded":
            raise UsageError(
                f"--resume: the latest {kind} run of {app} ({previous.id}) succeeded; "
                "nothing to resume"
            )
        digest = file_sha256(fly_toml) if fly_toml else None
        if digest != previous.fly_toml_sha256:
            raise UsageError(
                f"--resume: {fly_toml} changed since run {previous.id}; start a fresh run"
            )
        record = cls.new(
            kind, app, steps, fly_toml=fly_toml, runs_dir=runs_dir, options=options, mask=mask
        )
        record.resumed_from = previous.id
        earlier = {s.name: s for s in previous.steps}
        for step in record.steps:
            before = earlier.get(step.name)
            if before is None or before.status not in DONE:
                break  # from the first step that did not succeed, everything runs again
            step.status, step.summary, step.detail = before.status, before.summary, before.detail
            step.carried_over = True
        record.save()
        return record

    # -- running steps --------------------------------------------------------------------

    def get(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time one step; an exception marks it failed (one line) and is re-raised."""
        step = self.get(name)
        step.status, step.summary, step.detail, step.carried_over = PENDING, "", {}, False
        step.started = _now().isoformat(timespec="seconds")
        began = time.monotonic()
        try:
            yield step
        except BaseException as e:
            if step.status != FAILED:
                step.failed(_one_line(e) or type(e).__name__)
            raise
        finally:
            step.seconds = round(time.monotonic() - began, 3)
            if step.status == PENDING:
                step.ok()
            self.save()

    def finish(self) -> None:
        failed = any(s.status == FAILED for s in self.steps)
        pending = any(s.status == PENDING for s in self.steps)
        self.status = "failed" if failed else "incomplete" if pending else "succeeded"
        self.finished = _now().isoformat(timespec="seconds")
        self.save()

    # -- persistence ----------------------------------------------------------------------

    def save(self) -> None:
        """Write the record atomically (temporary file, fsync, rename), under `lock`."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        with self.lock:
            data = self.as_dict()
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".run-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True, default=str)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    #: Applied to every string the record writes or shows (steps quote output volguard did not
    #: write). By default it masks passwords in URLs; a runbook adds the token (`Masker`).
    mask: ClassVar[Callable[[str], str]] = staticmethod(mask_url_passwords)

    def as_dict(self) -> dict[str, Any]:
        # _masked builds new containers all the way down: no deep copy first (asdict's
        # took most of a save of a 10,000-file recover record, ~1 s, holding the GIL)
        data = _masked(self, self.mask)
        data.pop("path")
        return data

    @classmethod
    def load(cls, path: str) -> RunRecord:
        """The record in ``path``; a one-line UsageError naming the file when it is not one."""
        try:
            data = json.loads(read_regular(path))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            steps = data.pop("steps", None)
            if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
                raise ValueError("steps is not a list of objects")
            record = cls(**data, steps=[Step(**s) for s in steps], path=path)
            # Everything later code compares, sorts or prints must have its declared type.
            for name in ("kind", "app", "id", "started", "status"):
                if not isinstance(getattr(record, name), str):
                    raise ValueError(f"{name} is not a string")
            for step in record.steps:
                if not isinstance(step.name, str) or not isinstance(step.status, str):
                    raise ValueError("a step's name or status is not a string")
                if not isinstance(step.summary, str) or not isinstance(step.detail, dict):
                    raise ValueError("a step's summary or detail has the wrong type")
            return record
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
            # RecursionError: JSON nested deeper than the parser's stack
            raise UsageError(f"{path}: not a volguard run record ({_one_line(e)})") from None

    # -- summaries ------------------------------------------------------------------------

    def markdown(self) -> str:
        """The run as Markdown for ``$GITHUB_STEP_SUMMARY``, masked, control characters escaped."""
        return printable(self.mask(self._markdown()), newlines=True)

    def _markdown(self) -> str:
        icon = {OK: "✅", CHANGED: "🔧", FAILED: "❌", SKIPPED: "⏭️", PENDING: "…"}
        lines = [
            f"### volguard {self.kind}: {self.app} — {self.status}",
            "",
            f"Run `{self.id}`"
            + (f", resumed from `{self.resumed_from}`" if self.resumed_from else "")
            + f"; volguard {self.version}"
            + (f"; fly.toml sha256 `{self.fly_toml_sha256[:12]}`" if self.fly_toml_sha256 else ""),
            "",
            "| step | result | time | summary |",
            "|---|---|---|---|",
        ]
        for s in self.steps:
            took = f"{s.seconds:.1f} s" if s.seconds is not None else ""
            note = " (earlier run)" if s.carried_over else ""
            summary = s.summary.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {s.name} | {icon.get(s.status, '')} {s.status}{note} | {took} | "
                         f"{summary} |")  # fmt: skip
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        """One line per step, for the terminal (masked, control characters escaped)."""
        return printable(self.mask(self._text()), newlines=True)

    def _text(self) -> str:
        width = max((len(s.name) for s in self.steps), default=0)
        lines = []
        for s in self.steps:
            took = f"{s.seconds:6.1f}s" if s.seconds is not None else "       "
            note = " (earlier run)" if s.carried_over else ""
            summary = printable(self.mask(s.summary))  # one line, whatever it quotes
            lines.append(f"  {s.name:<{width}}  {s.status:<8} {took}  {summary}{note}")
        return "\n".join(lines)


def latest(kind: str, app: str, runs_dir: str = RUNS_DIR) -> RunRecord | None:
    """The most recent record of ``kind`` for exactly ``app`` (by start time, then name).

    The file name must be ``<kind>-<app>-<stamp>-<pid>.json`` in full, not merely start with
    ``<kind>-<app>-``: an app called ``shop`` must never pick up ``shop-staging``'s run. The
    record's own kind and app must agree with its name too.
    """
    pattern = re.compile(rf"{re.escape(kind)}-{re.escape(_safe(app))}-\d{{8}}T\d+-\d+\.json")
    try:
        names = [n for n in os.listdir(runs_dir) if pattern.fullmatch(n)]
    except FileNotFoundError:
        return None
    records = [RunRecord.load(os.path.join(runs_dir, n)) for n in names]
    records = [r for r in records if r.kind == kind and r.app == app]
    records.sort(key=lambda r: (r.started, r.id))
    return records[-1] if records else None


class RunLock:
    """An exclusive per-app lock for the duration of a run (``with RunLock(app): …``).

    Re-entrant within one process, so a runbook step may run another runbook of the same
    app (deploy's fix step runs remediate); another process is refused.
    """

    _held: ClassVar[dict[str, int]] = {}  # lock path -> depth, in this process

    def __init__(self, app: str, runs_dir: str = RUNS_DIR) -> None:
        self.app = app
        self.path = os.path.join(runs_dir, f"{_safe(app)}.lock")
        self._fd = -1
        self._nested = False

    def __enter__(self) -> RunLock:
        key = os.path.realpath(self.path)
        if self._held.get(key):
            self._held[key] += 1
            self._nested = True
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_all(fd).strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"another volguard run of {self.app} is in progress ({holder}); "
                f"wait for it to finish (lock: {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {_now().isoformat(timespec='seconds')}".encode(), 0)
        self._fd = fd
        self._held[key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        key = os.path.realpath(self.path)
        self._held[key] = self._held.get(key, 1) - 1
        if self._nested:
            return
        self._held.pop(key, None)
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock; the file stays (harmless)
            self._fd = -1


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if is_dataclass(value) and not isinstance(value, type):  # as asdict would
        return {f.name: _masked(getattr(value, f.name), mask) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, mask) for v in value]
    return value


def file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def finish_run(record: RunRecord) -> None:
    """End ``record`` (saved) and append its Markdown to ``$GITHUB_STEP_SUMMARY``; a summary
    that cannot be written is a warning on stderr, never the run's failure."""
    record.finish()
    try:
        write_step_summary(record)
    except OSError as e:
        print(f"volguard: warning: cannot append to $GITHUB_STEP_SUMMARY: {e}", file=sys.stderr)


def write_step_summary(record: RunRecord, environ: dict[str, str] | None = None) -> str | None:
    """Append the record's Markdown to ``$GITHUB_STEP_SUMMARY`` when set; the path or None."""
    env = os.environ if environ is None else environ
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(record.markdown())
    return path


def _read_all(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _safe(text: str) -> str:
    return _SAFE.sub("_", text) or "_"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500]
