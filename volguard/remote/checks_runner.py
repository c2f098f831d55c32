"""Run the testinfra check modules (checks/, and the user's own) over the probed Machines.

The Machine layer gathers each Machine's facts once (probe.py); the check
modules then judge them as ordinary pytest tests, one per concern, each tagged
with its id (`@pytest.mark.volguard("VG301")`). A module gets, per Machine:

- `observation` — the Machine, its fly.toml destination and its `MachineFacts`;
- `host` — the testinfra Host over the same transport, for checks of your own
  (`host.file("/data/media").user == "app"`); it costs a session per command on
  the fly transport, so prefer `observation.facts` where you can;
- `machine_context` — thresholds from volguard's configuration;
- `volguard_report(findings)` — report volguard Findings (and fail the test);

and module-wide `observations` (every Machine) for cross-Machine checks. A test
of yours that fails without `volguard_report` becomes a finding with its marker's
id and severity (`@pytest.mark.volguard("ACME1", severity="warning")`), or id
`CUSTOM`, severity error, when it has no marker. A catalogued id (VG…) keeps its
catalogue severity whatever the marker says: an id has one level.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from volguard.catalogue import CHECKS
from volguard.findings import Finding, Location, Severity
from volguard.rules.machine import MachineContext, Observation

CUSTOM_ID = "CUSTOM"


def builtin_checks_dir() -> Path:
    """volguard's own check modules: the repository's checks/, wherever volguard runs from.

    An installed wheel carries them as ``volguard/_checks`` (pyproject.toml's force-include);
    a clone or an editable install has them at the top of the repository, beside the package.
    """
    package = Path(__file__).resolve().parent.parent
    installed = package / "_checks"
    if installed.is_dir():
        return installed
    # only beside a volguard source tree: a site-packages may hold someone else's checks/
    clone = package.parent / "checks"
    if clone.is_dir() and (package.parent / "pyproject.toml").is_file():
        return clone
    raise FileNotFoundError("volguard's checks/ directory is missing from this installation")


def run_checks(
    observations: list[Observation],
    context: MachineContext,
    transport: Any,
    extra_dirs: Iterable[str] = (),
) -> list[Finding]:
    """Run the check modules in-process; return their findings."""
    dirs = [builtin_checks_dir()]
    for extra in extra_dirs:
        path = Path(extra).resolve()
        if path.is_dir() and path not in dirs:
            dirs.append(path)
    plugin = _Plugin(observations, context, transport)
    args = [
        *map(str, dirs),
        # volguard provides `host`, per probed Machine; testinfra's plugin is registered
        # under its entry-point name
        "-p", "no:testinfra",
        "-p", "no:pytest11.testinfra",
        "--continue-on-collection-errors",  # a broken user module must not silence the rest
        "--import-mode=importlib",  # same-named modules in two dirs, several runs per process
        "-p", "no:cacheprovider",
        "-p", "no:terminal",  # stdout belongs to the report
        "-p", "no:randomly",
        "-s",
        "-o", "addopts=",
        "-o", "python_files=test_*.py check_*.py",
        "--rootdir", str(dirs[0]),
    ]  # fmt: skip
    pytest.main(args, plugins=[plugin])
    return plugin.findings


class _Plugin:
    def __init__(
        self, observations: list[Observation], context: MachineContext, transport: Any
    ) -> None:
        # underscored: pytest reads the fixtures below off this object by name
        self._observations = observations
        self._context = context
        self._transport = transport
        self.findings: list[Finding] = []
        self._reported: set[str] = set()  # node ids that reported through volguard_report

    # -- pytest hooks

    def pytest_configure(self, config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers", "volguard(id, severity='error'): the check id a test reports under"
        )

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "_volguard_observation" in metafunc.fixturenames:
            metafunc.parametrize(
                "_volguard_observation",
                self._observations,
                ids=[o.machine.id for o in self._observations],
            )

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            text = str(report.longrepr).strip().splitlines()
            self.findings.append(
                Finding(
                    id=CUSTOM_ID,
                    severity=Severity.ERROR,
                    message=f"check module {report.nodeid} could not be loaded: "
                    f"{text[-1] if text else 'collection failed'}",
                    hint="Fix the module; the other checks ran without it.",
                    evidence={"check": report.nodeid},
                )
            )

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        outcome = yield
        report = outcome.get_result()
        if report.failed and item.nodeid not in self._reported:
            self.findings.append(self._from_failure(item, report))
            self._reported.add(item.nodeid)

    # -- fixtures

    @pytest.fixture
    def observation(self, _volguard_observation: Observation) -> Observation:
        return _volguard_observation

    @pytest.fixture
    def host(self, _volguard_observation: Observation) -> Any:
        return self._transport.host(_volguard_observation.machine)

    @pytest.fixture
    def observations(self) -> list[Observation]:
        return self._observations

    @pytest.fixture
    def machine_context(self) -> MachineContext:
        return self._context

    @pytest.fixture
    def volguard_report(self, request: pytest.FixtureRequest) -> Any:
        def report(findings: Iterable[Finding]) -> None:
            found = list(findings)
            if found:
                self.findings.extend(found)
                self._reported.add(request.node.nodeid)
                pytest.fail("\n".join(f"{f.id} {f.message}" for f in found), pytrace=False)

        return report

    # -- helpers

    def _from_failure(self, item: pytest.Item, report: pytest.TestReport) -> Finding:
        marker = item.get_closest_marker("volguard")
        check_id = (marker.args[0] if marker and marker.args else None) or CUSTOM_ID
        try:
            severity = Severity.parse(
                (marker.kwargs.get("severity") if marker else None) or "error"
            )
        except ValueError:
            severity = Severity.ERROR
        if check_id in CHECKS:  # a catalogued id has one severity, whatever the marker says
            severity = CHECKS[check_id].severity
        observation = getattr(item, "callspec", None) and item.callspec.params.get(
            "_volguard_observation"
        )
        where = Location(machine=observation.machine.id) if observation else Location()
        crash = getattr(report.longrepr, "reprcrash", None)
        text = str(report.longrepr).strip().splitlines()
        detail = " ".join((crash.message if crash else (text[-1] if text else "failed")).split())
        return Finding(
            id=check_id,
            severity=severity,
            message=f"{item.name}: {detail}"
            + (f" (on {observation.machine.id})" if observation else ""),
            hint="See the check module " + item.nodeid.split("::")[0],
            location=where,
            evidence={"check": item.nodeid},
        )
