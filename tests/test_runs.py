"""Run records, resume and the per-app lock (`volguard.runs`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from volguard import __version__
from volguard.errors import UsageError
from volguard.runs import RunLock, RunRecord, StepFailed, latest, write_step_summary

STEPS = ("one", "two", "three")


def _toml(tmp_path: Path, text: str = 'app = "a"\n') -> str:
    path = tmp_path / "fly.toml"
    path.write_text(text)
    return str(path)


def test_a_record_is_saved_after_every_step_with_timing_and_hash(tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    record = RunRecord.new("deploy", "my-app", STEPS, fly_toml=_toml(tmp_path), runs_dir=runs)
    with record.step("one") as step:
        step.changed("made a volume")
        step.detail["created"] = ["vol_1"]
    on_disk = json.loads(Path(record.path).read_text())
    assert on_disk["version"] == __version__
    assert on_disk["fly_toml_sha256"] == hashlib.sha256(b'app = "a"\n').hexdigest()
    first = on_disk["steps"][0]
    assert (first["name"], first["status"], first["summary"]) == ("one", "changed", "made a volume")
    assert first["detail"] == {"created": ["vol_1"]}
    assert first["seconds"] >= 0
    assert [s["status"] for s in on_disk["steps"][1:]] == ["pending", "pending"]
    assert on_disk["status"] == "running"
    assert not list(Path(runs).glob(".run-*"))  # the temporary file was renamed


def test_an_exception_fails_the_step_in_one_line_and_propagates(tmp_path: Path) -> None:
    record = RunRecord.new("deploy", "a", STEPS, runs_dir=str(tmp_path))
    with pytest.raises(RuntimeError), record.step("one"):
        raise RuntimeError("the API said\nno")
    record.finish()
    again = RunRecord.load(record.path)
    assert again.steps[0].status == "failed"
    assert again.steps[0].summary == "the API said no"
    assert again.status == "failed"


def test_resume_carries_done_steps_and_reruns_from_the_first_failure(tmp_path: Path) -> None:
    runs, toml = str(tmp_path / "runs"), _toml(tmp_path)
    first = RunRecord.new("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)
    with first.step("one") as step:
        step.changed("did one")
    with first.step("two") as step:
        step.failed("two broke")
    first.finish()

    second = RunRecord.resume("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)
    assert second.resumed_from == first.id
    assert second.id != first.id
    assert [(s.name, s.status, s.carried_over) for s in second.steps] == [
        ("one", "changed", True),
        ("two", "pending", False),
        ("three", "pending", False),
    ]
    with second.step("two"), second.step("three"):
        pass
    second.finish()
    assert second.status == "succeeded"
    assert latest("deploy", "a", runs).id == second.id
    with pytest.raises(UsageError, match="succeeded; nothing to resume"):
        RunRecord.resume("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)


def test_resume_refuses_when_fly_toml_changed_or_there_is_no_run(tmp_path: Path) -> None:
    runs, toml = str(tmp_path / "runs"), _toml(tmp_path)
    with pytest.raises(UsageError, match="no earlier deploy run of a"):
        RunRecord.resume("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)
    record = RunRecord.new("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)
    record.finish()
    Path(toml).write_text('app = "b"\n')
    with pytest.raises(UsageError, match="changed since run"):
        RunRecord.resume("deploy", "a", STEPS, fly_toml=toml, runs_dir=runs)


def test_a_broken_record_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "deploy-a-20260101T000000-1.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a volguard run record"):
        latest("deploy", "a", str(tmp_path))


def _try_lock(runs: str, app: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        from volguard.runs import LockedError, RunLock
        try:
            with RunLock({app!r}, {runs!r}):
                print("locked")
        except LockedError as e:
            print(e)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_the_lock_refuses_another_process_running_the_same_app_only(tmp_path: Path) -> None:
    runs = str(tmp_path)
    with RunLock("a", runs):
        busy = _try_lock(runs, "a").stdout
        assert busy.startswith(f"another volguard run of a is in progress (pid {os.getpid()} ")
        assert _try_lock(runs, "b").stdout == "locked\n"  # another app: no conflict
        with RunLock("a", runs):  # the same process may nest (deploy runs remediate)
            pass
        assert _try_lock(runs, "a").stdout.startswith("another volguard run")  # still held
    assert _try_lock(runs, "a").stdout == "locked\n"  # released


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, signal
        from volguard.runs import RunLock
        RunLock("a", {str(tmp_path)!r}).__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False)
    assert done.returncode == -9
    with RunLock("a", str(tmp_path)):
        pass


def test_markdown_summary_goes_to_github_step_summary(tmp_path: Path) -> None:
    record = RunRecord.new("deploy", "a", STEPS, runs_dir=str(tmp_path))
    with record.step("one") as step:
        step.skipped("--no-deploy | not asked")

    def fail(step):
        step.failed("VG301 on 148e21ea4d3089")
        raise StepFailed("stop")

    with record.step("two") as step, pytest.raises(StepFailed):
        fail(step)
    record.finish()
    summary = tmp_path / "summary.md"
    assert write_step_summary(record, {"GITHUB_STEP_SUMMARY": str(summary)}) == str(summary)
    text = summary.read_text()
    assert "### volguard deploy: a — failed" in text
    assert "| one | ⏭️ skipped |" in text
    assert "--no-deploy \\| not asked" in text  # a pipe cannot break the table
    assert "| two | ❌ failed |" in text
    assert "| three | … pending |  |  |" in text
    assert write_step_summary(record, {}) is None


# -- #8 item 19: --resume picks exactly this app's record; a corrupt one is one line -----------


def _failed_run(app: str, runs: str, toml: str) -> RunRecord:
    record = RunRecord.new("deploy", app, STEPS, fly_toml=toml, runs_dir=runs)
    with record.step("one") as step:
        step.ok(f"done for {app}")
    record.get("two").failed("stopped")
    record.finish()
    return record


def test_resume_of_shop_never_picks_a_later_run_of_shop_staging(tmp_path: Path) -> None:
    runs, toml = str(tmp_path / "runs"), _toml(tmp_path)
    shop = _failed_run("shop", runs, toml)
    _failed_run("shop-staging", runs, toml)  # later, and its file name starts with "deploy-shop-"
    assert latest("deploy", "shop", runs).id == shop.id
    resumed = RunRecord.resume("deploy", "shop", STEPS, fly_toml=toml, runs_dir=runs)
    assert resumed.resumed_from == shop.id
    assert resumed.get("one").summary == "done for shop"


def test_resume_of_shop_staging_alone_finds_no_run_of_shop(tmp_path: Path) -> None:
    runs, toml = str(tmp_path / "runs"), _toml(tmp_path)
    _failed_run("shop-staging", runs, toml)
    assert latest("deploy", "shop", runs) is None


def test_a_record_whose_inside_names_another_app_is_not_resumed(tmp_path: Path) -> None:
    runs, toml = str(tmp_path / "runs"), _toml(tmp_path)
    other = _failed_run("shop", runs, toml)
    data = json.loads(Path(other.path).read_text())
    data["app"] = "shop-staging"
    Path(other.path).write_text(json.dumps(data))
    assert latest("deploy", "shop", runs) is None


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '"a string"',
        '{"kind": "deploy"}',
        '{"kind": "deploy", "app": "a", "id": "x", "started": 5, "steps": []}',
        '{"kind": "deploy", "app": "a", "id": "x", "started": "", "steps": [1, 2]}',
        '{"kind": "deploy", "app": "a", "id": "x", "started": "", "steps": {}}',
        '{"kind": "deploy", "app": "a", "id": "x", "started": "", "steps": [{"nam": 1}]}',
        '{"kind": "deploy", "app": "a", "id": "x", "started": "", "steps": [{"name": 1}]}',
        "\udcff".encode("utf-8", "surrogateescape").decode("latin-1"),
    ],
)
def test_a_corrupt_record_is_one_line_naming_the_file(tmp_path: Path, content: str) -> None:
    good = RunRecord.new("deploy", "a", STEPS, runs_dir=str(tmp_path))
    good.finish()
    bad = tmp_path / "deploy-a-20990101T000000000000-1.json"
    bad.write_bytes(content.encode("latin-1", "replace"))
    with pytest.raises(UsageError) as raised:
        latest("deploy", "a", str(tmp_path))
    message = str(raised.value)
    assert str(bad) in message
    assert "\n" not in message


def test_a_record_changed_by_two_threads_under_its_lock_always_saves(tmp_path):
    """recover's copy: the receiving session's thread records each file while the main
    thread records a temporary Machine it makes (the Ledger); each save walks the whole
    record. A save without the lock met a dict mid-change ("dictionary changed size during
    iteration") and the run died as an internal error."""
    import threading

    from volguard.fly.temporary import Ledger

    record = RunRecord.new("recover", "a", STEPS, runs_dir=str(tmp_path))
    record.step(STEPS[0])
    results: dict[str, dict] = {}
    record.get(STEPS[0]).detail["results"] = results
    stop, failures = threading.Event(), []

    def receiver() -> None:
        i = 0
        try:
            while not stop.is_set():
                with record.lock:
                    results[f"user_data/{i:06d}.bin"] = {"status": "restored", "size": i}
                    if i % 50 == 0:
                        record.save()
                i += 1
        except Exception as e:
            failures.append(e)

    thread = threading.Thread(target=receiver)
    thread.start()
    try:
        ledger = Ledger.for_step(record, STEPS[0])
        for n in range(60):
            entry = ledger.intend("machine", f"vg_tmp_{n}", "a")
            ledger.mark(entry, "started", f"m{n}")
    finally:
        stop.set()
        thread.join()
    assert failures == []
    saved = json.loads(Path(record.path).read_text())
    assert len(saved["steps"][0]["detail"]["temporary"]) == 60
