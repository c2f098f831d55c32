"""The check-id contract: catalogue, docs, producers, check modules and tests move together.

An id is a public promise of one condition at one severity (as in Django's check framework).
Nothing here lists ids by hand: the ids come from `volguard.catalogue.CHECKS`, the producers
from the rule registries and from the source (read with `ast`), the tests from the test
suite's own assertions. So a new id that lacks a docs section, a producer, a check module or
a test fails here, and so does a producer of an id the catalogue does not know.

What "a test that produces it" proves: some test in tests/ makes a *positive* assertion that
names the id — an ``assert`` that is not ``not …``, ``… not in …`` or ``… == []`` (those prove
absence), a call from a test to a helper of its module that asserts (``one(report, "VG101")``),
a ``pytest.raises(match=…)``, or a parametrize case of a test that asserts. It proves that the
suite checks the id appears; that the test passes is the suite's own job.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from volguard import catalogue
from volguard.catalogue import CHECKS, finding
from volguard.config import Settings
from volguard.findings import Location, Severity
from volguard.lint import lint
from volguard.rules import RULES
from volguard.rules import machine as machine_rules
from volguard.rules import platform as platform_rules  # noqa: F401  (registers the rules)
from volguard.rules import static as static_rules  # noqa: F401  (registers the rules)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "volguard"
DOCS = ROOT / "docs" / "checks.md"
ID = re.compile(r"\bVG\d{3}\b")
LAYER_OF_HUNDRED = {"1": "static", "2": "platform", "3": "machine", "4": "data"}
#: The Machine layer reports VG300 itself (a Machine it could not probe): no rule, no module.
LAYER_REPORTED = {"VG300"}


# -- the catalogue itself ----------------------------------------------------------------------


def test_ids_are_vg_and_three_digits_in_their_layers_hundred() -> None:
    for check_id, check in CHECKS.items():
        assert re.fullmatch(r"VG\d{3}", check_id), check_id
        assert check.id == check_id
        assert LAYER_OF_HUNDRED[check_id[2]] == check.layer, check_id
        assert isinstance(check.severity, Severity)
        assert check.title, check_id
        assert check.hint, check_id


def test_finding_cannot_choose_a_severity() -> None:
    # one id, one level: the only severity a finding() can carry is the catalogue's
    assert "severity" not in inspect.signature(finding).parameters
    for check_id, check in CHECKS.items():
        assert finding(check_id, "m", Location()).severity is check.severity


# -- docs/checks.md ----------------------------------------------------------------------------


def _doc_sections() -> dict[str, str]:
    """``## VGnnn`` heading -> the line after it (``**title** · severity``)."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    return {
        line[3:].strip(): next((n for n in lines[i + 1 :] if n.strip()), "")
        for i, line in enumerate(lines)
        if re.fullmatch(r"## VG\d{3}", line.strip())
    }


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, spaces as '-', punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_id_has_a_docs_section_at_its_anchor_with_its_severity() -> None:
    sections = _doc_sections()
    for check_id, check in CHECKS.items():
        assert check_id in sections, f"docs/checks.md has no '## {check_id}' section"
        doc = finding(check_id, "m", Location()).doc
        assert doc == f"docs/checks.md#{_github_anchor(check_id)}", doc
        assert sections[check_id].rstrip().endswith(f"· {check.severity.value}"), (
            f"docs/checks.md gives {check_id} another severity: {sections[check_id]!r}"
        )
    assert set(sections) <= set(CHECKS), set(sections) - set(CHECKS)


# -- producers: the registries and the source --------------------------------------------------


def _product_modules() -> Iterator[tuple[Path, ast.Module]]:
    """volguard's own modules; not the simulator (a tool of the tests, never a producer)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sim" in path.relative_to(PACKAGE).parts or path.name == "catalogue.py":
            continue
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _module_constants(modules: list[tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    """Module-level names bound to an id (``REFUSAL_ID = "VG404"``) or to a dict of ids."""
    names: dict[str, set[str]] = defaultdict(set)
    for _, tree in modules:
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                ids = _literal_ids(node.value)
                for target in targets:
                    if isinstance(target, ast.Name) and ids:
                        names[target.id] |= ids
    return names


def _literal_ids(node: ast.expr) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} if ID.fullmatch(node.value) else set()
    if isinstance(node, ast.Dict):  # FINDING_IDS = {MISSING: "VG401", ...}
        return {i for v in node.values if v is not None for i in _literal_ids(v)}
    return set()


def _ids_of(node: ast.expr | None, constants: dict[str, set[str]]) -> set[str]:
    """The ids an id expression can take: a literal, a named constant, or ``TABLE[key]``."""
    if node is None:
        return set()
    if isinstance(node, ast.Constant):
        return _literal_ids(node)
    if isinstance(node, ast.Name):
        return constants.get(node.id, set())
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return constants.get(node.value.id, set())
    return set()


def _leading_id(node: ast.expr, constants: dict[str, set[str]]) -> set[str]:
    """The id a message opens with: ``"VG404 remediation refused: …"`` or ``f"{ID} …"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        match = ID.match(node.value)
        return {match.group()} if match else set()
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.FormattedValue):
            return _ids_of(first.value, constants)
        return _leading_id(first, constants)
    return set()


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def source_producers() -> dict[str, set[str]]:
    """id -> where volguard's source produces it (``path:line``), found with ``ast``.

    A producer is: ``finding(ID, …)`` / ``Finding(ID, …)`` / ``Finding(id=ID)``; any call
    with ``id=ID`` or a dict with ``"id": ID`` (a structured refusal); a ``raise`` whose
    message opens with the id. ID may be a literal, a module constant, or ``TABLE[key]``.
    """
    modules = list(_product_modules())
    constants = _module_constants(modules)
    found: dict[str, set[str]] = defaultdict(set)
    for path, tree in modules:
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            ids: set[str] = set()
            if isinstance(node, ast.Call):
                if _callee(node) in ("finding", "Finding") and node.args:
                    ids |= _ids_of(node.args[0], constants)
                for keyword in node.keywords:
                    if keyword.arg == "id":
                        ids |= _ids_of(keyword.value, constants)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "id":
                        ids |= _ids_of(value, constants)
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                ids |= _leading_id(node.exc.args[0], constants)
            for check_id in ids:
                found[check_id].add(f"{where}:{node.lineno}")
    return found


def registered() -> dict[str, set[str]]:
    """id -> the registries that hold a rule for it."""
    out: dict[str, set[str]] = defaultdict(set)
    for kind, rules in RULES.items():
        for check_id in rules:
            out[check_id].add(kind)
    return out


def test_every_id_has_a_producer() -> None:
    producers, rules = source_producers(), registered()
    missing = [i for i in CHECKS if i not in producers and i not in rules]
    assert not missing, (
        f"ids with no rule and no finding()/Finding()/refusal in volguard/: {missing}"
    )


def test_every_id_produced_or_registered_is_catalogued() -> None:
    unknown = (set(source_producers()) | set(registered())) - set(CHECKS)
    assert not unknown, f"produced but not in volguard/catalogue.py: {sorted(unknown)}"


def test_a_registered_id_belongs_to_its_registrys_layer() -> None:
    layer_of_kind = {"static": "static", "platform": "platform", "machine": "machine"}
    layer_of_kind["fleet"] = "machine"
    for check_id, kinds in registered().items():
        assert {layer_of_kind[k] for k in kinds} == {CHECKS[check_id].layer}, check_id


def test_no_finding_is_built_around_the_catalogue() -> None:
    # Finding(...) with a literal VG id would pick its own severity and hint: use finding()
    modules = list(_product_modules())
    constants = _module_constants(modules)
    direct = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in modules
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _callee(node) == "Finding"
        and (
            (node.args and _ids_of(node.args[0], constants))
            or any(k.arg == "id" and _ids_of(k.value, constants) for k in node.keywords)
        )
    ]
    assert not direct, direct


CORPUS = sorted((ROOT / "tests" / "data" / "flytoml").glob("*.toml"))


@pytest.mark.parametrize("media_root", [None, "/data/media", "relative/media"])
def test_static_findings_on_real_files_carry_the_catalogue_severity(media_root) -> None:
    # the ~50 real fly.toml files of the corpus, each rule's actual output
    assert CORPUS
    seen = set()
    for path in CORPUS:
        report = lint(Settings.load(None, media_root=media_root), str(path))
        for f in report.findings:
            assert f.id in CHECKS, f.id
            assert f.severity is CHECKS[f.id].severity, (path.name, f.id, f.severity)
            seen.add(f.id)
    assert len(seen) >= 5  # the corpus does exercise the rules


# -- the Machine layer: a check module per id --------------------------------------------------


def _check_modules() -> dict[str, list[tuple[Path, str]]]:
    """id -> (module, its source) of each checks/ module marked ``pytest.mark.volguard(id)``."""
    out: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path in sorted((ROOT / "checks").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "volguard"
                and ast.unparse(node.func.value) == "pytest.mark"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                out[node.args[0].value].append((path, source))
    return out


def test_every_machine_id_has_its_check_module() -> None:
    modules = _check_modules()
    machine_ids = [i for i, c in CHECKS.items() if c.layer == "machine"]
    for check_id in machine_ids:
        if check_id in LAYER_REPORTED:
            continue
        assert check_id in modules, (
            f"checks/ has no module marked pytest.mark.volguard({check_id!r})"
        )
        assert any(p.name.startswith(f"test_{check_id.lower()}_") for p, _ in modules[check_id])
    assert set(modules) <= set(machine_ids), set(modules) - set(machine_ids)


def test_each_check_module_calls_the_rules_registered_for_its_id() -> None:
    # so checks/ (what verify-volume runs) and run_machine_rules judge with the same rules
    modules = _check_modules()
    for kind in ("machine", "fleet"):
        for check_id, rule in RULES[kind].items():
            assert getattr(machine_rules, rule.__name__) is rule
            calls = f"rules.{rule.__name__}("
            assert any(calls in source for _, source in modules[check_id]), (
                f"no checks/ module for {check_id} calls {calls}…)"
            )


def test_machine_layer_lists_every_machine_id() -> None:
    ids = [i for i, c in CHECKS.items() if c.layer == "machine"]
    assert machine_rules.machine_check_ids() == tuple(sorted(ids))


def test_static_layer_lists_every_static_id() -> None:
    # lint reports VG100 (reading fly.toml) and every registered static rule as evaluated
    ids = {i for i, c in CHECKS.items() if c.layer == "static"}
    assert {"VG100", *RULES["static"]} == ids
    assert {"VG200", *RULES["platform"]} == {i for i, c in CHECKS.items() if c.layer == "platform"}


# -- tests: each id is asserted by at least one test -------------------------------------------


def _is_negative(test: ast.expr) -> bool:
    """``not x``, ``a not in b``, ``x == []`` / ``None`` / ``0``: assertions of absence."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return True
    if isinstance(test, ast.Compare):
        if any(isinstance(op, ast.NotIn) for op in test.ops):
            return True
        empty = [
            c
            for c in test.comparators
            if (isinstance(c, ast.List | ast.Tuple | ast.Set) and not c.elts)
            or (isinstance(c, ast.Dict) and not c.keys)
            or (isinstance(c, ast.Constant) and c.value in (None, 0, False, ""))
        ]
        return bool(empty) and all(isinstance(op, ast.Eq | ast.Is) for op in test.ops)
    return False


def _mentioned(node: ast.AST, tables: dict[str, set[str]] | None = None) -> set[str]:
    """Ids in the string literals under ``node``, and in the module tables it names."""
    ids = {
        i
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
        for i in ID.findall(n.value)
    }
    for n in ast.walk(node):
        if tables and isinstance(n, ast.Name):
            ids |= tables.get(n.id, set())
    return ids


def _asserts(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and _callee(n) == "raises")
        for n in ast.walk(node)
    )


def asserted_ids() -> dict[str, set[str]]:
    """id -> the tests (``file::name``) whose positive assertions name it."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # module-level tables an assertion compares with (EXPECTED = {"incident": ["VG306"]})
        tables = {
            target.id: _mentioned(n.value)
            for n in tree.body
            if isinstance(n, ast.Assign)
            for target in n.targets
            if isinstance(target, ast.Name)
        }
        helpers = {
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("test_") and _asserts(n)
        }
        tests = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        ]
        for test in tests:
            if not _asserts(test):
                continue
            ids: set[str] = set()
            for decorator in test.decorator_list:
                if "parametrize" in ast.unparse(decorator):
                    ids |= _mentioned(decorator, tables)
            for node in ast.walk(test):
                if isinstance(node, ast.Assert) and not _is_negative(node.test):
                    ids |= _mentioned(node.test, tables)
                elif isinstance(node, ast.Call) and _callee(node) in helpers:
                    ids |= _mentioned(node, tables)
                elif isinstance(node, ast.Call) and _callee(node) == "raises":
                    ids |= {i for k in node.keywords if k.arg == "match" for i in _mentioned(k)}
            for check_id in ids:
                out[check_id].add(f"{path.name}::{test.name}")
    return out


def test_every_id_is_asserted_by_a_test() -> None:
    asserted = asserted_ids()
    missing = [i for i in CHECKS if i not in asserted]
    assert not missing, f"no test in tests/ asserts that these ids are produced: {missing}"


def test_the_test_scan_tells_presence_from_absence() -> None:
    # the scanner itself: `of(r, "VG101") == []` is not a test of VG101, `one(r, "VG101")` is
    tree = ast.parse(
        "def one(r, i):\n    assert r\n"
        "def test_a(r):\n    assert of(r, 'VG901') == []\n    assert 'VG902' not in r\n"
        "def test_b(r):\n    one(r, 'VG903')\n    assert pairs(r) == [('VG904', 'm')]\n"
    )
    asserts = [n for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert [_is_negative(a.test) for a in asserts] == [False, True, True, False]
    assert catalogue.CHECKS is CHECKS


def test_a_message_quoting_a_line_break_stays_one_line_and_keeps_the_rest() -> None:
    """A value from a Machine with a line break (an app user "a\\nb") cannot split a finding
    in two; only the line breaks are escaped, the location keeps the exact value."""
    value = "a\nb\r\u2028c\x1b[2J"
    f = finding("VG307", f"owned by app, not {value}", Location(machine=value))
    assert f.message == "owned by app, not a\\x0ab\\x0d\\u2028c\x1b[2J"
    assert f.location.machine == value
