"""The one document the Django side and the Fly side exchange: ``check_missing_files --json``.

``manage.py check_missing_files --json`` (`volguard.django`) writes it on a Machine and
``volguard remediate`` (`volguard.remediate`) reads it back; both take its words from
here, so the two sides cannot drift apart. Importable without Django on purpose: the Fly
side never imports Django.

What it defines:

- the reasons a row is reported for (`REASONS`), which of them are problems (no usable
  file: exit code 2), which rows ``--fix`` and ``--delete`` act on (`candidates`);
- the document's shape: `AuditDocumentJSON` and its rows, `AuditRowJSON`, built by
  `audit_document` with every count under a key that says what it counts;
- the ``--max-missing`` value (`parse_max_missing`), checked by both sides;
- the VG404 refusal (`Refusal`): under ``--json`` a refused ``--fix``/``--delete`` prints
  the audit with ``{"refused": {"id": "VG404", "reasons": […], "message": "…"}}`` on stdout
  and exits 2, so a caller reads the refusal instead of searching stderr for its id;
- the confirmed plan (`Plan`, ``--plan``): the rows an operator confirmed, as the Fly side
  passes them to the acting run, which refuses (``{"refused": {"id": "plan_changed", …}}``,
  exit 2) when the rows it would act on are not exactly those.

Documented for users in docs/remediate.md ("The JSON document").
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from volguard.errors import UsageError

MISSING, EMPTY, INVALID_NAME, SHARED = "missing", "empty", "invalid_name", "shared"
#: The stored file exists but holds 0 bytes (a truncated upload): VG405. Distinct from
#: ``empty``, which is a required file field holding no name at all.
EMPTY_FILE = "empty_file"
#: Every reason a row is reported for, in the order reports list them.
REASONS = (MISSING, EMPTY, EMPTY_FILE, INVALID_NAME, SHARED)
#: Reasons that mean "this row has no usable file": counted in ``problem_rows``, exit code 2.
#: (A shared file is a warning: the rows have a file, VG403.)
PROBLEM_REASONS = (MISSING, EMPTY, EMPTY_FILE, INVALID_NAME)
#: Reasons ``--fix`` acts on: the row has no usable file (a 0-byte upload is not one). An
#: invalid name is left alone: the file may well exist under a name volguard refuses to
#: follow.
FIX_REASONS = (MISSING, EMPTY, EMPTY_FILE)
#: Of those, the reasons ``--delete`` leaves alone: a 0-byte file is still a file on the
#: volume, and deleting its row would leave it behind with nothing pointing at it.
KEEP_ON_DELETE = (EMPTY_FILE,)
#: The interlock's check id: a ``--fix``/``--delete`` refused because storage looks wrong.
REFUSAL_ID = "VG404"
DEFAULT_MAX_MISSING = "10%"

_MAX_MISSING = re.compile(r"(\d+(?:\.\d+)?)(%?)")

Row = TypeVar("Row")


class AuditRowJSON(TypedDict):
    """One reported row: ``reason`` is one of `REASONS`; a row missing its file that
    other rows share appears twice, once per reason."""

    model: str  # app_label.ModelName
    pk: Any
    field: str
    name: str | None  # the stored name
    reason: str
    detail: str
    owner: Any  # the owner field's raw value (a user id), None when not configured
    status: Any  # the status field's value, None when not configured
    path: str  # where the file was looked for; empty for a name never looked up
    shared_with: int | None  # rows sharing the name (reason "shared")


class RefusalJSON(TypedDict):
    id: str  # REFUSAL_ID
    reasons: list[str]
    message: str


class AuditCountsJSON(TypedDict):
    """What every document holds: the counts, how each field was audited, the rows."""

    total_rows: int  # rows the filters select
    audited_rows: int  # of them, not skipped as recent uploads
    skipped_recent: int
    older_than_seconds: float
    files_checked: int  # audited rows that name a file
    problem_rows: int  # audited rows without a usable file: sum of PROBLEM_REASONS
    per_reason: dict[str, int]  # every reason of REASONS, 0 included
    strategy: dict[str, str]  # app.Model.field: how its storage was checked
    storage_requests: int
    duration_seconds: float
    fields: list[dict[str, Any]]
    notes: list[str]
    rows: list[AuditRowJSON]


class AuditDocumentJSON(AuditCountsJSON, total=False):
    """The whole document: ``remediation`` only after ``--fix``/``--delete`` acted,
    ``refused`` only when the interlock refused them."""

    remediation: dict[str, Any]
    refused: RefusalJSON


def audit_document(
    *,
    total_rows: int,
    audited_rows: int,
    skipped_recent: int,
    older_than_seconds: float,
    files_checked: int,
    per_reason: Mapping[str, int],
    strategy: dict[str, str],
    storage_requests: int,
    duration_seconds: float,
    fields: list[dict[str, Any]],
    notes: list[str],
    rows: list[AuditRowJSON],
) -> AuditDocumentJSON:
    """The document, with ``problem_rows`` and the full ``per_reason`` derived here."""
    return {
        "total_rows": total_rows,
        "audited_rows": audited_rows,
        "skipped_recent": skipped_recent,
        "older_than_seconds": older_than_seconds,
        "files_checked": files_checked,
        "problem_rows": sum(per_reason.get(r, 0) for r in PROBLEM_REASONS),
        "per_reason": {r: per_reason.get(r, 0) for r in REASONS},
        "strategy": strategy,
        "storage_requests": storage_requests,
        "duration_seconds": duration_seconds,
        "fields": fields,
        "notes": notes,
        "rows": rows,
    }


def candidates(
    rows: Iterable[Row],
    *,
    reason: Callable[[Row], Any],
    key: Callable[[Row], Hashable],
    for_delete: bool = False,
) -> list[Row]:
    """The rows ``--fix`` acts on (`FIX_REASONS`); for ``--delete``, none whose file
    another row uses (a row also reported ``shared``: deleting it is never safe, VG403)
    and none whose file is there but empty (`KEEP_ON_DELETE`).

    ``reason`` and ``key`` (model, field, pk) read a row, which is an `AuditRowJSON` on the
    Fly side and the audit's own row object on the Django side.
    """
    rows = list(rows)
    chosen = [r for r in rows if reason(r) in FIX_REASONS]
    if for_delete:
        shared = {key(r) for r in rows if reason(r) == SHARED}
        chosen = [r for r in chosen if key(r) not in shared and reason(r) not in KEEP_ON_DELETE]
    return chosen


# -- --max-missing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MaxMissing:
    """``--max-missing``: a fraction of the audited rows (``10%``) or a row count (``50``)."""

    text: str
    fraction: float | None = None
    count: int | None = None

    def limit(self, audited: int) -> float:
        return self.fraction * audited if self.fraction is not None else float(self.count or 0)


def parse_max_missing(text: str) -> MaxMissing:
    """``10%`` or ``50`` as a `MaxMissing`; anything else is a `UsageError`."""
    value = text.strip()
    match = _MAX_MISSING.fullmatch(value)
    if not match or (not match[2] and "." in match[1]) or (match[2] and float(match[1]) > 100):
        raise UsageError(
            f"bad --max-missing {text!r}: use a count (50) or a percentage up to 100% (10%)"
        )
    if match[2]:
        return MaxMissing(value, fraction=float(match[1]) / 100)
    return MaxMissing(value, count=int(match[1]))


# -- the refusal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """VG404: the interlock refused ``--fix``/``--delete``; nothing was changed."""

    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        return (
            f"{REFUSAL_ID} remediation refused: storage looks unmounted or empty: "
            f"{'; '.join(self.reasons)}; nothing changed (--force overrides)"
        )

    def as_dict(self) -> RefusalJSON:
        return {"id": REFUSAL_ID, "reasons": list(self.reasons), "message": self.message}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Refusal | None:
        """The document's refusal, or None when it holds none."""
        refused = document.get("refused")
        if not isinstance(refused, dict) or refused.get("id") != REFUSAL_ID:
            return None
        return cls(tuple(str(r) for r in refused.get("reasons") or ()))


def find_document(stdout: str) -> dict[str, Any] | None:
    """The JSON object a ``--json`` run printed (the last line that is one, if not all is:
    a project's own code may print before it)."""
    text = stdout.strip()
    lines = [text, *reversed([line for line in text.splitlines() if line.startswith("{")])]
    for candidate in lines:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# -- the confirmed plan -----------------------------------------------------------------------

#: The refusal id of an acting run whose rows are not the confirmed plan's.
PLAN_CHANGED = "plan_changed"
#: Longest ``--plan`` value that lists the rows; a larger plan travels as a digest and a count.
#: (The argv reaches the Machine as one command-line argument, at most 128 KiB on Linux.)
PLAN_MAX_CHARS = 32 * 1024
#: How many appeared or gone rows a refusal names.
PLAN_SHOWN = 10

PlanKey = tuple[str, str, str]  # (app.Model, field, str(pk))


@dataclass(frozen=True)
class Plan:
    """The rows a confirmed ``--fix``/``--delete`` may act on, as ``--plan`` carries them.

    ``rows:<base64 of zlib'd JSON>`` lists every row (``{"app.Model.field": [pk, …]}``), so a
    changed plan is refused naming the rows that appeared and those that went;
    ``sha256:<hex>:<count>`` (a plan longer than `PLAN_MAX_CHARS`) carries the digest of the
    same JSON and the row count, so a changed plan is refused with the counts only.
    """

    digest: str
    count: int
    keys: frozenset[PlanKey] | None = None

    @classmethod
    def of(cls, keys: Iterable[PlanKey]) -> Plan:
        found = frozenset(keys)
        return cls(hashlib.sha256(_canonical(found)).hexdigest(), len(found), found)

    def encode(self, max_chars: int = PLAN_MAX_CHARS) -> str:
        if self.keys is not None:
            packed = zlib.compress(_canonical(self.keys), 9)
            text = "rows:" + base64.urlsafe_b64encode(packed).decode("ascii")
            if len(text) <= max_chars:
                return text
        return f"sha256:{self.digest}:{self.count}"

    @classmethod
    def decode(cls, text: str) -> Plan:
        """A ``--plan`` value; anything malformed is a `UsageError`."""
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "rows":
                inflate = zlib.decompressobj()
                raw = inflate.decompress(base64.urlsafe_b64decode(rest.encode("ascii")), 1 << 24)
                if inflate.unconsumed_tail:
                    raise ValueError("more than 16 MiB of rows")
                fields = json.loads(raw)
                if not isinstance(fields, dict):
                    raise ValueError("not an object")
                keys: set[PlanKey] = set()
                for label, pks in fields.items():
                    model, _, name = str(label).rpartition(".")
                    if not model or not isinstance(pks, list):
                        raise ValueError(f"bad entry {label!r}")
                    keys.update((model, name, str(pk)) for pk in pks)
                return cls.of(keys)
            if kind == "sha256":
                digest, _, count = rest.partition(":")
                if re.fullmatch(r"[0-9a-f]{64}", digest) and count.isdigit():
                    return cls(digest, int(count))
        except (ValueError, UnicodeError, zlib.error, RecursionError) as e:
            raise UsageError(f"bad --plan: {' '.join(str(e).split())[:200]}") from None
        raise UsageError("bad --plan: use the value volguard remediate passes (rows:… or sha256:…)")

    def change(self, keys: Iterable[PlanKey]) -> str | None:
        """Why ``keys`` (the rows a run would act on) are not this plan, or None when they are."""
        now = Plan.of(keys)
        if now.digest == self.digest:
            return None
        if self.keys is None:
            return (
                f"{_rows(self.count)} confirmed, {_rows(now.count)} found now (the rows "
                "differ: the plan was too large to list, only its digest was kept)"
            )
        assert now.keys is not None
        parts = []
        for what, keys_ in (("appeared", now.keys - self.keys), ("went", self.keys - now.keys)):
            if keys_:
                shown = ", ".join(f"{m}.{f}#pk={pk}" for m, f, pk in sorted(keys_)[:PLAN_SHOWN])
                more = f" and {len(keys_) - PLAN_SHOWN} more" if len(keys_) > PLAN_SHOWN else ""
                parts.append(f"{_rows(len(keys_))} {what} ({shown}{more})")
        return "; ".join(parts)


def plan_refusal(why: str) -> RefusalJSON:
    """The ``refused`` object of an acting run whose rows are not the confirmed plan's."""
    return {
        "id": PLAN_CHANGED,
        "reasons": [why],
        "message": (
            f"remediation refused: the rows changed since the plan was confirmed: {why}; "
            "nothing changed (run it again to review the new plan)"
        ),
    }


def _canonical(keys: Iterable[PlanKey]) -> bytes:
    fields: dict[str, list[str]] = {}
    for model, field_name, pk in keys:
        fields.setdefault(f"{model}.{field_name}", []).append(str(pk))
    ordered = {label: sorted(pks) for label, pks in sorted(fields.items())}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"
