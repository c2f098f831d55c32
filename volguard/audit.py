"""The append-only audit log: one JSON line per change volguard makes (DESIGN: safety rules).

Each entry says when, who (OS user and host), which command, what changed, and
the state before and after. Lines are appended with O_APPEND and fsync'd, so
concurrent writers never interleave within a line and a crash loses at most
the line being written.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from typing import Any

DEFAULT_PATH = os.path.join(".volguard", "audit.jsonl")


class AuditLog:
    def __init__(self, path: str = DEFAULT_PATH, command: str = "") -> None:
        self.path = path
        self.command = command

    def record(self, action: str, target: str, before: Any = None, after: Any = None, **more: Any):
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "user": _user(),
            "host": socket.gethostname(),
            "command": self.command,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            **more,
        }
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
