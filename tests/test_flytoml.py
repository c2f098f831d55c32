"""Reading fly.toml the way flyctl does (fly-facts §0.1, §1), and where keys sit in the file."""

from __future__ import annotations

import textwrap

import pytest

from volguard.flytoml import parse_fly_toml, read_fly_toml
from volguard.tomlsource import SourceMap
from volguard.units import SizeError, parse_size_gb


def parse(text: str):
    config, findings = parse_fly_toml(textwrap.dedent(text))
    assert config is not None, findings
    return config, findings


def ids(findings) -> list[str]:
    return [f.id for f in findings]


# -- mounts: table, array, legacy `mount` ---------------------------------------------------


def test_mounts_table_is_one_mount():
    config, findings = parse(
        """
        [mounts]
          source = "data"
          destination = "/data"
          processes = ["app"]
        """
    )
    assert findings == []
    assert len(config.mounts) == 1
    mount = config.mounts[0]
    assert (mount.source, mount.destination, mount.processes) == ("data", "/data", ("app",))
    assert mount.key == ("mounts",)


def test_mounts_array_keeps_every_entry_in_order():
    config, findings = parse(
        """
        [[mounts]]
          source = "one"
          destination = "/one"
        [[mounts]]
          source = "two"
          destination = "/two"
          processes = ["worker"]
        """
    )
    assert findings == []
    assert [m.source for m in config.mounts] == ["one", "two"]
    assert [m.key for m in config.mounts] == [("mounts", 0), ("mounts", 1)]
    assert config.mounts[1].processes == ("worker",)


def test_legacy_mount_key_is_read_and_comes_before_mounts():
    # patchMounts appends `mount` first, then `mounts`, whatever the order in the file
    config, findings = parse(
        """
        [[mounts]]
          source = "new"
          destination = "/new"

        [mount]
          source = "old"
          destination = "/old"
        """
    )
    assert findings == []
    assert [m.source for m in config.mounts] == ["old", "new"]
    assert config.mounts[0].key == ("mount",)


def test_legacy_mount_array_is_read():
    config, _ = parse(
        """
        [[mount]]
          source = "a"
          destination = "/a"
        [[mount]]
          source = "b"
          destination = "/b"
        """
    )
    assert [m.source for m in config.mounts] == ["a", "b"]


def test_mounts_as_array_of_inline_tables():
    config, findings = parse(
        """
        mounts = [{ source = "a", destination = "/a" }, { source = "b", destination = "/b" }]
        """
    )
    assert findings == []
    assert [(m.source, m.key) for m in config.mounts] == [
        ("a", ("mounts", 0)),
        ("b", ("mounts", 1)),
    ]
    assert config.locate(*config.mounts[1].key, "destination").line == 2


# -- process groups -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'app = "x"\n',
        "processes = []\n",
        'app = "x"\nprocesses = []\n[env]\n  A = "b"\n',
    ],
    ids=["absent", "legacy-empty-array", "legacy-empty-array-with-env"],
)
def test_no_processes_means_one_group_app(text):
    config, findings = parse(text)
    assert findings == []
    assert config.group_names == ["app"]
    assert config.default_group == "app"


def test_legacy_processes_array_of_tables_becomes_groups():
    config, findings = parse(
        """
        [[processes]]
          name = "web"
          command = "gunicorn x.wsgi"
        [[processes]]
          name = "worker"
          command = "celery -A x worker"
        """
    )
    assert findings == []
    assert config.processes == {"web": "gunicorn x.wsgi", "worker": "celery -A x worker"}
    assert config.group_names == ["web", "worker"]


def test_top_level_processes_array_without_tables_loads_as_app():
    # patchProcesses keeps only the tables of an array; none left -> no [processes] -> "app"
    config, findings = parse('processes = ["web"]\n')
    assert findings == []
    assert config.group_names == ["app"]


def test_group_names_are_sorted_like_flyctl():
    config, _ = parse(
        """
        [processes]
          worker = "celery"
          app = "gunicorn"
          beat = "celery beat"
        """
    )
    assert config.group_names == ["app", "beat", "worker"]


@pytest.mark.parametrize(
    ("groups", "default"),
    [
        (["worker", "app", "beat"], "app"),  # `app` wins even though `beat` sorts first
        (["celery", "beat"], "beat"),  # no `app`: alphabetically first
        (["worker", "web"], "web"),
        (["zeta"], "zeta"),
    ],
)
def test_default_group_is_app_else_alphabetically_first(groups, default):
    lines = "\n".join(f'  {g} = "run {g}"' for g in groups)
    config, _ = parse(f"[processes]\n{lines}\n")
    assert config.default_group == default


@pytest.mark.parametrize("processes_line", ["", "processes = []"])
def test_mount_without_processes_reaches_only_the_default_group(processes_line):
    config, _ = parse(
        f"""
        [processes]
          app = "gunicorn"
          worker = "celery"
          hola = "sleep"

        [[mounts]]
          source = "data"
          destination = "/data"
          {processes_line}
        """
    )
    mount = config.mounts[0]
    assert config.groups_of(mount) == ["app"]
    assert config.mounts_of("app") == [mount]
    assert config.mounts_of("worker") == []
    assert config.mounts_of("hola") == []


def test_mount_without_processes_and_without_app_goes_to_first_group():
    # corpus 32: [processes] celery + beat, mount without processes -> only "beat"
    config, _ = parse(
        """
        [processes]
          celery = "celery worker"
          beat = "celery beat"
        [mounts]
          source = "d"
          destination = "/data"
        """
    )
    assert config.groups_of(config.mounts[0]) == ["beat"]
    assert config.mounts_of("celery") == []


def test_flytoml_fixture_from_flyctl_testdata_tomachine_mounts():
    # FLYCTL testdata/tomachine-mounts.toml: app gets data, back gets trash, hola gets nothing
    config, _ = parse(
        """
        [processes]
          app = ""
          back = ""
          hola = ""
        [[mounts]]
          source = "data"
          destination = "/data"
        [[mounts]]
          source = "trash"
          destination = "/trash"
          processes = ["back"]
        """
    )
    assert [m.source for m in config.mounts_of("app")] == ["data"]
    assert [m.source for m in config.mounts_of("back")] == ["trash"]
    assert config.mounts_of("hola") == []


# -- types: what flyctl casts and what it refuses ---------------------------------------------


def test_integer_initial_size_is_cast_to_string():
    config, findings = parse(
        """
        [[mounts]]
          source = "d"
          destination = "/data"
          initial_size = 10
        """
    )
    assert findings == []
    assert config.mounts[0].initial_size == "10"


def test_float_initial_size_is_cast_like_go_percent_v():
    # patchMounts castToString uses fmt.Sprintf("%v"): float64(10) prints as "10", so flyctl
    # reads 10 GB. "10.0" would be parsed by go-units as 10 bytes.
    config, findings = parse(
        """
        [[mounts]]
          source = "d"
          destination = "/data"
          initial_size = 10.0
        """
    )
    assert findings == []
    assert config.mounts[0].initial_size == "10"


@pytest.mark.parametrize("key", ["auto_extend_size_increment", "auto_extend_size_limit"])
def test_integer_auto_extend_size_is_vg100(key):
    # only initial_size is cast by patchMounts; the others are Go strings, so JSON fails
    _, findings = parse(
        f"""
        [[mounts]]
          source = "d"
          destination = "/data"
          {key} = 5
        """
    )
    assert ids(findings) == ["VG100"]
    assert findings[0].location.line == 5
    assert key in findings[0].message


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('source = 42\n  destination = "/data"', "source"),
        ('source = "d"\n  destination = ["/data"]', "destination"),
        ('source = "d"\n  destination = "/data"\n  processes = "app"', "processes"),
    ],
)
def test_wrong_types_in_a_mount_are_vg100_at_the_value(body, key):
    text = f"[[mounts]]\n  {body}\n"
    _, findings = parse_fly_toml(text)
    assert ids(findings) == ["VG100"]
    lines = text.splitlines()
    wanted = next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith(key))
    column = lines[wanted - 1].index("= ") + 3  # 1-based column of the value after "= "
    assert (findings[0].location.line, findings[0].location.column) == (wanted, column)
    assert f"`mounts.{key}`" in findings[0].message


def test_env_non_string_values_are_stringified_go_style():
    config, findings = parse(
        """
        [env]
          PORT = 8090
          DEBUG = true
          OFF = false
          RATIO = 1.5
          WHOLE = 1.0
          BIG = 1e6
          LIST = [1, "a", true]
          NAME = "x"
        """
    )
    assert findings == []
    assert config.env == {
        "PORT": "8090",
        "DEBUG": "true",
        "OFF": "false",
        "RATIO": "1.5",
        "WHOLE": "1",  # Go: fmt.Sprintf("%v", 1.0) == "1"
        "BIG": "1e+06",  # Go: fmt.Sprintf("%v", 1e6) == "1e+06"
        "LIST": "[1 a true]",
        "NAME": "x",
    }


def test_env_integer_media_root_does_not_break_loading():
    config, findings = parse('[env]\n  SERVER_PORT = 8090\n  MODE="production"\n')
    assert findings == []
    assert config.env == {"SERVER_PORT": "8090", "MODE": "production"}


# -- bytes: BOM, CRLF, errors -----------------------------------------------------------------


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "fly.toml"
    path.write_bytes(b'\xef\xbb\xbfapp = "bom"\nprimary_region = "ams"\n')
    config, findings = read_fly_toml(str(path))
    assert findings == []
    assert config is not None
    assert config.app == "bom"
    assert config.source_map.position(("app",)) == (1, 1)
    assert config.source_map.position(("primary_region",)) == (2, 1)


def test_crlf_line_endings_are_accepted(tmp_path):
    text = (
        'app = "crlf"\r\nprimary_region = "ams"\r\n\r\n[[mounts]]\r\n'
        '  source = "d"\r\n  destination = "/data"\r\n'
    )
    path = tmp_path / "fly.toml"
    path.write_bytes(text.encode())
    config, findings = read_fly_toml(str(path))
    assert findings == []
    assert config.mounts[0].destination == "/data"  # no stray "\r"
    assert config.source_map.position(("mounts", 0)) == (4, 1)
    assert config.source_map.position(("mounts", 0, "destination")) == (6, 3)


def test_bom_and_crlf_together(tmp_path):
    path = tmp_path / "fly.toml"
    path.write_bytes(b'\xef\xbb\xbfapp = "x"\r\n[env]\r\n  MEDIA_ROOT = "/data/media"\r\n')
    config, findings = read_fly_toml(str(path))
    assert findings == []
    assert config.env["MEDIA_ROOT"] == "/data/media"
    assert config.source_map.position(("env", "MEDIA_ROOT")) == (3, 3)


def test_missing_file_is_vg100(tmp_path):
    config, findings = read_fly_toml(str(tmp_path / "nope.toml"))
    assert config is None
    assert ids(findings) == ["VG100"]
    assert "does not exist" in findings[0].message


def test_invalid_toml_is_vg100_with_line(tmp_path):
    path = tmp_path / "fly.toml"
    path.write_text('app = "x"\n[mounts\n  source = "d"\n')
    config, findings = read_fly_toml(str(path))
    assert config is None
    assert ids(findings) == ["VG100"]
    assert findings[0].location.line == 2


def test_empty_file_is_not_vg100():
    config, findings = parse_fly_toml("")
    assert findings == []
    assert config is not None
    assert config.mounts == ()
    assert config.group_names == ["app"]


# -- SourceMap: line AND column ------------------------------------------------------------

SAMPLE = """\
app = "x"
primary_region = "ams"

[env]
  MEDIA_ROOT = "/data/media"
  "QUOTED KEY" = "v"
  'lit' = "v"

[http_service]
  concurrency.type = "requests"
  "a b" . c = 1

[[mounts]]
  source = "a"
  destination = "/a"

  [[mounts]]
    source = "b"
    destination = "/b"
"""


@pytest.mark.parametrize(
    ("path", "pos"),
    [
        (("app",), (1, 1)),
        (("primary_region",), (2, 1)),
        (("env",), (4, 1)),
        (("env", "MEDIA_ROOT"), (5, 3)),
        (("env", "QUOTED KEY"), (6, 3)),
        (("env", "lit"), (7, 3)),
        (("http_service",), (9, 1)),
        (("http_service", "concurrency"), (10, 3)),
        (("http_service", "concurrency", "type"), (10, 3)),
        (("http_service", "a b", "c"), (11, 3)),
        (("mounts",), (13, 1)),
        (("mounts", 0), (13, 1)),
        (("mounts", 0, "source"), (14, 3)),
        (("mounts", 0, "destination"), (15, 3)),
        (("mounts", 1), (17, 3)),
        (("mounts", 1, "source"), (18, 5)),
        (("mounts", 1, "destination"), (19, 5)),
    ],
)
def test_source_map_positions(path, pos):
    assert parse_fly_toml(SAMPLE)[0] is not None  # the sample is valid TOML
    assert SourceMap(SAMPLE).position(path) == pos


def test_source_map_falls_back_to_nearest_ancestor():
    sm = SourceMap(SAMPLE)
    assert sm.position(("mounts", 1, "processes")) == (17, 3)
    assert sm.position(("env", "NOT_THERE")) == (4, 1)
    assert sm.position(("nothing",)) is None


def test_top_level_dotted_key_positions():
    text = 'app = "x"\nenv.MEDIA_ROOT = "/data/media"\n'
    config, _ = parse_fly_toml(text)
    assert config.env == {"MEDIA_ROOT": "/data/media"}
    sm = SourceMap(text)
    assert sm.position(("env",)) == (2, 1)
    assert sm.position(("env", "MEDIA_ROOT")) == (2, 1)


def test_quoted_header_parts():
    text = '[ "env" ]\n  A = "1"\n[services."ports"]\n  x = 1\n'
    sm = SourceMap(text)
    assert sm.position(("env", "A")) == (2, 3)
    assert sm.position(("services", "ports", "x")) == (4, 3)


def test_nested_array_of_tables_numbering():
    text = textwrap.dedent(
        """\
        [[services]]
          internal_port = 8080
          [[services.ports]]
            port = 80
          [[services.ports]]
            port = 443
        [[services]]
          internal_port = 9090
          [[services.ports]]
            port = 81
        """
    )
    sm = SourceMap(text)
    assert sm.position(("services", 0, "ports", 1, "port")) == (6, 5)
    assert sm.position(("services", 1)) == (7, 1)
    assert sm.position(("services", 1, "ports", 0, "port")) == (10, 5)


def test_multiline_basic_string_does_not_fool_the_scanner():
    text = textwrap.dedent(
        '''\
        [deploy]
          release_command = """
        [mounts]
          source = "fake"
        processes = ["x"]
        [[mounts]]
        """
          strategy = "rolling"

        [mounts]
          source = "real"
          destination = "/data"
        '''
    )
    config, findings = parse_fly_toml(text)
    assert findings == []
    assert [m.source for m in config.mounts] == ["real"]
    sm = SourceMap(text)
    assert sm.position(("deploy", "release_command")) == (2, 3)
    assert sm.position(("deploy", "strategy")) == (8, 3)
    assert sm.position(("mounts",)) == (10, 1)
    assert sm.position(("mounts", "source")) == (11, 3)
    assert sm.position(("processes",)) is None
    assert ("mounts", 0) not in sm.positions


def test_multiline_literal_string_does_not_fool_the_scanner():
    text = textwrap.dedent(
        """\
        [env]
          SCRIPT = '''
        key = "value"
        [x]
        # volguard: not a comment
        '''
          MEDIA_ROOT = "/data/media"
        [mounts]
          source = "d"
          destination = "/data"
        """
    )
    assert parse_fly_toml(text)[1] == []
    sm = SourceMap(text)
    assert sm.position(("env", "MEDIA_ROOT")) == (7, 3)
    assert sm.position(("mounts", "source")) == (9, 3)
    assert sm.position(("key",)) is None
    assert ("x",) not in sm.positions
    assert sm.comments == []


def test_multiline_string_closed_on_the_same_line_keeps_scanning():
    text = 'a = """one line"""\nb = 2\n[t]\n  c = 3\n'
    sm = SourceMap(text)
    assert sm.position(("b",)) == (2, 1)
    assert sm.position(("t", "c")) == (4, 3)


def test_multiline_array_does_not_fool_the_scanner():
    text = textwrap.dedent(
        """\
        [processes]
          app = "a"
          worker = "w"
        [[mounts]]
          source = "d"
          processes = [
            "app",  # a comment with a [bracket
            "wor]ker",
            "x = 1",
          ]
          destination = "/data"
        [env]
          K = "v"
        """
    )
    config, _ = parse_fly_toml(text)
    assert config.mounts[0].processes == ("app", "wor]ker", "x = 1")
    sm = SourceMap(text)
    assert sm.position(("mounts", 0, "processes")) == (6, 3)
    assert sm.position(("mounts", 0, "destination")) == (11, 3)
    assert sm.position(("env",)) == (12, 1)
    assert sm.position(("env", "K")) == (13, 3)
    assert ("mounts", 0, "x") not in sm.positions


def test_multiline_string_inside_a_multiline_array():
    text = 'cmd = [\n  """\n[x]\ny = 1\n""",\n]\nafter = 1\n'
    assert parse_fly_toml(text)[1] == []
    sm = SourceMap(text)
    assert sm.position(("after",)) == (7, 1)
    assert sm.position(("y",)) is None
    assert ("x",) not in sm.positions


def test_escaped_quotes_in_a_multiline_string_do_not_close_it():
    # `\\"""` is an escaped quote plus two quotes: the string goes on (TOML 1.0)
    text = 'a = """\nsay \\"""\n[x]\n"""\nb = 1\n'
    assert parse_fly_toml(text)[1] == []
    sm = SourceMap(text)
    assert ("x",) not in sm.positions
    assert sm.position(("b",)) == (5, 1)


def test_escaped_quotes_in_a_one_line_multiline_string():
    text = 'a = """x \\""" y"""\nb = 1\n[t]\n  c = 2\n'
    assert parse_fly_toml(text)[1] == []
    sm = SourceMap(text)
    assert sm.position(("b",)) == (2, 1)
    assert sm.position(("t", "c")) == (4, 3)


def test_header_after_hash_inside_string_is_still_a_header():
    text = 'a = "x # not a comment"\n[env]\n  B = "1" # real\n'
    sm = SourceMap(text)
    assert sm.position(("env", "B")) == (3, 3)
    assert [(c.line, c.text.strip(), c.trailing) for c in sm.comments] == [(3, "real", True)]


# -- sizes like flyctl's helpers.ParseSize + go-units FromHumanSize -------------------------


@pytest.mark.parametrize(
    ("text", "gb"),
    [
        ("20", 20),
        ("20gb", 20),
        ("1GB", 1),
        ("15Mb", 0),
        ("10 GB", 10),
        ("1.5GB", 1),
        ("1GiB", 1),  # go-units FromHumanSize is decimal, the "i" is tolerated
        ("1g", 1),
        ("500gb", 500),
        ("+5", 5),  # strconv.Atoi accepts a sign
        ("-5", -5),
    ],
)
def test_parse_size_gb(text, gb):
    assert parse_size_gb(text) == gb


@pytest.mark.parametrize("text", ["abc", "1.2.3", "", "gb", "10 XB"])
def test_parse_size_gb_errors(text):
    with pytest.raises(SizeError):
        parse_size_gb(text)


# -- whole-file decoding: flyctl's Go types for every section (volguard/flyctl_types.py) ----

BASE = '[[mounts]]\n  source = "data"\n  destination = "/data"\n'


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("[[services]]\n  internal_port = 8080\n  concurrency = 20\n", "services.concurrency"),
        ('[[services]]\n  internal_port = "http"\n', "services.internal_port"),
        ('[[services]]\n  [[services.ports]]\n    port = "https"\n', "services.ports.port"),
        ('[http_service]\n  internal_port = "8080"\n', "http_service.internal_port"),
        ("[http_service]\n  concurrency = 20\n", "http_service.concurrency"),
        ('[http_service]\n  auto_stop_machines = "yes"\n', "http_service.auto_stop_machines"),
        ('[[http_service.checks]]\n  interval = "10 s"\n', "http_service.checks.interval"),
        ('[deploy]\n  wait_timeout = "five minutes"\n', "deploy.wait_timeout"),
        ('[deploy]\n  max_unavailable = "33%"\n', "deploy.max_unavailable"),
        ("[build]\n  dockerfile = 1\n", "build.dockerfile"),
        ("[build.args]\n  PYTHON_VERSION = 3.12\n", "build.args.PYTHON_VERSION"),
        ("[experimental]\n  cmd = 1\n", "experimental.cmd"),
        ("swap_size_mb = 512.5\n", "swap_size_mb"),
        ('kill_timeout = "5 seconds"\n', "kill_timeout"),
        ('[[vm]]\n  cpus = "2"\n', "vm.cpus"),
        ('[statics]\n  guest_path = "/app/static"\n  url_prefix = "/static"\n', "statics"),
        ('[checks.status]\n  port = "8080"\n  type = "http"\n', "checks.status.port"),
        ('[[restart]]\n  policy = "always"\n  retries = "3"\n', "restart.retries"),
        ("[[metrics]]\n  port = 9091.5\n", "metrics.port"),
        (
            "[http_service.http_options]\n  idle_timeout = -1\n",
            "http_service.http_options.idle_timeout",
        ),
        ("unknown_key = nan\n", "unknown_key"),
    ],
)
def test_a_value_flyctl_cannot_decode_in_any_section_is_vg100(section, key):
    # flyctl keeps only the app name for such a file (serde.go unmarshalTOML's fallback)
    text = f'app = "a"\n{section}{BASE}'
    config, findings = parse_fly_toml(text)
    assert ids(findings) == ["VG100"], [f.message for f in findings]
    assert f"`{key}`" in findings[0].message
    assert "flyctl cannot load this file" in findings[0].message
    assert config is not None
    assert [m.source for m in config.mounts] == ["data"]  # the rest is still linted


@pytest.mark.parametrize(
    "section",
    [
        '[[services]]\n  internal_port = "8080"\n  concurrency = "20,25"\n'
        '  [[services.ports]]\n    port = "443"\n    handlers = ["tls", "http"]\n',
        '[[services]]\n  [[services.tcp_checks]]\n    interval = 10000\n    timeout = ""\n',
        '[http_service]\n  internal_port = 8080.0\n  auto_stop_machines = "suspend"\n',
        '[[http_service.checks]]\n  interval = 15000000000\n  timeout = "2s"\n',
        'kill_timeout = 5\n[deploy]\n  wait_timeout = "1m30s"\n  max_unavailable = 0.5\n',
        '[experimental]\n  cmd = "run"\n  entrypoint = ["sh", "-c"]\n  allowed_public_ports = []\n',
        '[[vm]]\n  memory = 512\n  size = "shared-cpu-1x"\n  persist_rootfs = "always"\n',
        "[env]\n  WORKERS = 4\n  DEBUG = false\n",
        '[[statics]]\n  guest_path = "/app/static"\n  url_prefix = "/static"\n',
        'an_unknown_section = {anything = [1, "two", 3.0]}\n',
        "[build.settings]\n  anything = 1.5\n",
        "built_at = 1979-05-27T07:32:00Z\nconsole_command = 1979-05-27\n",
    ],
)
def test_values_flyctl_decodes_or_patches_are_not_vg100(section):
    _, findings = parse_fly_toml(f'app = "a"\n{section}{BASE}')
    assert findings == [], [f.message for f in findings]


def test_a_wrong_value_in_an_inline_table_points_at_its_line():
    text = 'app = "a"\n[[services]]\n  ports = [{port = 80, handlers = "http"}]\n'
    _, findings = parse_fly_toml(text)
    [problem] = findings
    assert (problem.location.line, problem.location.column) == (3, 11)
    assert "`services.ports.handlers`" in problem.message


def test_a_case_folded_key_is_decoded_without_its_patch_as_encoding_json_does():
    # `Env` reaches Config.Env by encoding/json's case-insensitive match, but patchEnv only
    # stringifies the key spelled `env`
    _, findings = parse_fly_toml("[Env]\n  WORKERS = 4\n")
    assert ids(findings) == ["VG100"]
    _, findings = parse_fly_toml("[env]\n  WORKERS = 4\n")
    assert findings == []


def test_a_list_and_its_item_are_reported_once():
    _, findings = parse_fly_toml(BASE + '  processes = ["app", 1]\n')
    assert ids(findings) == ["VG100"]
