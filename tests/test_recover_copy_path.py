"""recover's copy path at the scale of a real incident: more names than a command line holds.

A command line (an ssh command, `sh -c`, flyctl's --command) holds at most 128 KiB in one
argument (Linux's MAX_ARG_STRLEN): about 1,500 of the names Django stores. The probe's
locate and send modes take the names on the session's stdin instead, still in ONE session
per source. These tests run the real probe over the `local` transport on this host, against
a MEDIA_ROOT in a temporary directory (no app process: the configured MEDIA_ROOT is used).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from volguard.config import Settings
from volguard.fly.models import Machine
from volguard.recover import MachineSource
from volguard.remote.transports import Transport, TransportOptions

NAMES = [f"user_data/user_{i % 97:03d}/2026/11/IMG_{i:05d}_{'k' * 40}.jpg" for i in range(4000)]
WORKER = Machine(id="e6482d84693162", state="started", region="syd", group="worker")


def _media(root: Path) -> dict[str, bytes]:
    contents = {}
    for i, name in enumerate(NAMES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"file {i}\n".encode() * (i % 7 + 1)
        path.write_bytes(data)
        contents[name] = data
    return contents


def _source(root: Path, transport: Transport) -> MachineSource:
    # an app user with no process here, so the probe uses the configured MEDIA_ROOT
    settings = Settings.load(
        None, transport="local", media_root=str(root), app_user="volguard-no-such-user"
    )
    return MachineSource(transport, WORKER, settings, timeout=120)


def test_more_names_than_a_command_line_holds_are_found_in_one_session(tmp_path: Path) -> None:
    assert len(json.dumps(NAMES)) > 128 * 1024  # they could not travel as an argument
    contents = _media(tmp_path)
    with Transport(TransportOptions(kind="local", timeout=120)) as transport:
        found = _source(tmp_path, transport).search([*NAMES, "user_data/absent.jpg"])
        sessions = dict(transport.sessions)
    assert set(found) == set(NAMES)
    for name in (NAMES[0], NAMES[1234], NAMES[-1]):
        assert found[name].sha256 == hashlib.sha256(contents[name]).hexdigest()
        assert found[name].size == len(contents[name])
    assert sessions == {WORKER.id: 1}


def test_more_names_than_a_command_line_holds_are_sent_in_one_session(tmp_path: Path) -> None:
    contents = _media(tmp_path)
    received: dict[str, bytes] = {}
    with Transport(TransportOptions(kind="local", timeout=120)) as transport:
        with _source(tmp_path, transport).open_reader(NAMES, timeout=120) as reader:
            while not (header := reader.header()).get("end"):
                data = b"".join(reader.chunks(int(header["size"])))
                trailer = reader.header()
                assert trailer["sha256"] == hashlib.sha256(data).hexdigest()
                received[header["name"]] = data
        sessions = dict(transport.sessions)
    assert list(received) == NAMES  # every name, in the order asked
    assert received == contents
    assert sessions == {WORKER.id: 1}
