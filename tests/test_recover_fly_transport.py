"""`volguard recover --apply` over the `fly` transport: the copy's long-lived sessions
through `flyctl ssh console`.

recover's search, send and receive sessions are streams: JSON lines and then file bodies
on the session's stdin, frames on its stdout, for minutes. With ``--transport fly`` each is
one `flyctl ssh console --command "sh -c '…'"`, here the local fleet's stand-in
(volguard/sim/flyctl.py), which behaves as flyctl does where a stream can trip: ``-C``
runs without a shell, the remote exit status is not propagated (any failure is exit 1),
the "Connecting to …" spinner line goes to stderr, and the session's stdin is the remote
command's stdin. Real parts only (tests/recover_support.py): the API simulator, the local
fleet (each Machine a namespace with a real sshd), the example Django app on the app
Machine. The files exist only on the worker's volume: about fifty, one of a few MB, names
with spaces and non-ASCII letters.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recover_support import (
    APP,
    COUNTING_DRIVER,
    SLOW_DRIVER,
    WORKER,
    Deployment,
    deployment,
    needs_fleet,
)

#: The rows' file names, as Django stores them: spaces, accents, other scripts, and one
#: video of a few MB in the middle (files are sent in the plan's order).
NAMES = {
    f"f{i:02d}": name
    for i, name in enumerate(
        [f"user_data/{i % 4}/upload {i:02d}.csv" for i in range(16)]
        + [f"user_data/photos/été à Noël {i:02d}.jpg" for i in range(8)]
        + ["user_data/videos/clip de l’été 4 MB.mp4"]
        + [f"user_data/日本語/レポート {i:02d}.pdf" for i in range(8)]
        + [f"user_data/Ünïcödé naïve/ß ø {i:02d}.txt" for i in range(8)]
        + [f"user_data/2026/11/{i:02d}/a  b {i}.bin" for i in range(10)]
    )
}
BIG = NAMES["f24"]

WRITE = """\
import base64, json, os, sys
for name, data in json.load(sys.stdin).items():
    path = os.path.join("/data/media", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(base64.b64decode(data))
"""


FLY = ("--apply", "--yes", "--transport", "fly", "--format", "json", "--sources", "machines")


def contents() -> dict[str, bytes]:
    rng = random.Random(14)  # noqa: S311 - test data, not a secret
    out = {name: rng.randbytes(rng.randrange(2_000, 24_000)) for name in NAMES.values()}
    out[BIG] = rng.randbytes(4 * 1024 * 1024 + 17)
    return out


def put_on_worker(site: Deployment, files: dict[str, bytes]) -> None:
    data = json.dumps({n: base64.b64encode(b).decode() for n, b in files.items()})
    done = site.fleet.exec(WORKER, [site.python, "-c", WRITE], user="app", input=data)
    assert done.returncode == 0, done.stderr


def restored_names(site: Deployment) -> list[str]:
    return [e["target"] for e in site.log_lines() if e["action"] == "restore_file"]


def count_restored(site: Deployment) -> int:
    """restore_file lines in the target's change log so far (it may be mid-append)."""
    done = site.fleet.exec(APP, ["sh", "-c", "grep -c restore_file /data/.volguard/audit.jsonl"])
    return int(done.stdout.strip() or 0)


def flyctl_sessions(site: Deployment, mode: str) -> list[int]:
    """Pids of the running flyctl stand-ins of this fleet whose probe runs ``mode``
    (the probe's arguments are base64 JSON on its command line: ``{"send": …}``)."""
    marker = base64.b64encode(f'{{"{mode}": '.encode()).decode().rstrip("=")[:12]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if (
            "volguard.sim.flyctl" in words
            and str(site.fleet.state_file) in words
            and any(marker in w for w in words)
        ):
            found.append(int(entry))
    return found


@needs_fleet
def test_recover_streams_every_file_byte_identical_over_the_fly_transport(
    tmp_path: Path,
) -> None:
    files = contents()
    with deployment(tmp_path, NAMES) as site:
        put_on_worker(site, files)
        source_before = site.files(WORKER)
        done = site.run_cli(*FLY)
        target = site.files(APP)
        restored = restored_names(site)
        source_after = site.files(WORKER)
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["summary"]["error"] is None
    assert sorted(a["name"] for a in document["applied"]) == sorted(NAMES.values())
    for name, data in files.items():
        sha, owner, _, _ = target[name]
        assert sha == hashlib.sha256(data).hexdigest(), name
        assert owner == "app:app", name
    assert target[BIG][0] == hashlib.sha256(files[BIG]).hexdigest()
    # one change-log line per file, none twice
    assert sorted(restored) == sorted(NAMES.values())
    assert temps == ""
    assert source_after == source_before  # the source is only read
    assert site.sim.token not in done.stdout + done.stderr


@needs_fleet
def test_a_flyctl_session_killed_mid_stream_fails_in_one_line_and_resume_sends_no_file_twice(
    tmp_path: Path,
) -> None:
    files = contents()
    with deployment(tmp_path, NAMES) as site:
        put_on_worker(site, files)
        proc = site.start(SLOW_DRIVER, *site.cli(*FLY)[1:])
        killed: list[int] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if count_restored(site) >= 8:
                # flyctl is one process; the stand-in is flyctl and its ssh, one group
                for pid in flyctl_sessions(site, "send"):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                    killed.append(pid)
                break
            time.sleep(0.05)
        first_out, first_err = proc.communicate(timeout=300)
        time.sleep(1)  # the target's orphaned session sees its pipe close and ends
        first = restored_names(site)
        counts = tmp_path / "sent.json"
        resumed = subprocess.run(
            [sys.executable, "-c", COUNTING_DRIVER, str(counts),
             *site.cli(*FLY, "--resume")[1:]],
            cwd=site.workdir, env=site.cli_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        sent: list[list[Any]] = json.loads(counts.read_text())
        target = site.files(APP)
        restored = restored_names(site)
        temps = site.sh(APP, "find /data/media -name '.volguard-recover-*'")
    assert killed, "the send session ended before it could be killed"
    # the killed session: exit 1, its reason in one line naming the source
    assert proc.returncode == 1, first_out + first_err
    errors = [line for line in first_err.splitlines() if line.startswith("volguard: error:")]
    assert len(errors) == 1, first_err
    assert WORKER in errors[0], errors[0]
    summary = json.loads(first_out)["summary"]
    assert summary["error"]
    assert "\n" not in summary["error"]
    assert 8 <= len(first) < len(NAMES)
    # --resume: finishes; what the killed run restored is not sent again, the rest is
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    sent_names = [name for name, _ in sent]
    assert not set(sent_names) & set(first)
    assert sorted(sent_names) == sorted(set(NAMES.values()) - set(first))
    assert sum(size for _, size in sent) == sum(
        len(data) for name, data in files.items() if name not in first
    )
    # every file back once, byte for byte, with one change-log line each
    assert sorted(restored) == sorted(NAMES.values())
    for name, data in files.items():
        assert target[name][0] == hashlib.sha256(data).hexdigest(), name
    assert temps == ""
    token = site.sim.token
    assert token not in first_out + first_err + resumed.stdout + resumed.stderr
