"""hzsyncd.toml: defaults, the reference file, every validation message, lookup, passwords."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from hzsyncd.config import (
    SCHEMA,
    TABLE_SCHEMA,
    Config,
    find_config,
    load_config,
    parse_config,
)
from hzsyncd.errors import ConfigError
from hzsyncd.tables import TABLES

REFERENCE = Path(__file__).resolve().parent.parent / "hzsyncd.toml"
SECRET = "s3cr3t-Pa55"


def write(folder: Path, text: str, name: str = "hzsyncd.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(text: str, **kwargs: object) -> list[str]:
    """The lines of the ConfigError that `text` raises, read as the file hzsyncd.toml."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("hzsyncd.toml"), environ={}, **kwargs)  # type: ignore[arg-type]
    return str(caught.value).splitlines()


# --- defaults and the reference file ---------------------------------------------------------


def test_no_file_gives_the_defaults_of_the_design() -> None:
    config = load_config(None, environ={})
    assert config.source is None
    assert config.service.wsdl == "http://jshz.sme.gov.cn/services/ReportService?wsdl"
    assert config.service.area_code == "320000"
    assert (config.service.timeout, config.service.max_in_flight) == (30, 4)
    assert config.service.rate_limit == 0
    assert config.account.user_id == ""
    assert config.account.password is None
    assert config.account.password_source == "none"
    assert config.spool.root == Path("/var/spool/hzsyncd")
    assert (config.spool.settle_seconds, config.spool.rescan_seconds) == (2, 60)
    assert (config.spool.observer, config.spool.encoding) == ("auto", "auto")
    assert config.spool.incomplete_seconds == 300
    assert config.ledger.path == Path("/var/lib/hzsyncd/ledger.db")
    assert (config.ledger.history_days, config.ledger.synchronous) == (0, "normal")
    assert (config.retry.backoff_initial, config.retry.backoff_max) == (5, 600)
    assert (config.retry.relation_retry_hours, config.retry.ip_retry_seconds) == (24, 300)
    assert (config.log.target, config.log.level) == ("auto", "info")
    assert dict(config.tables) == TABLES
    assert dict(config.area_codes) == {name: "320000" for name in TABLES}


def test_numbers_are_floats_and_counts_are_ints() -> None:
    config = load_config(None, environ={})
    assert isinstance(config.service.timeout, float)
    assert isinstance(config.service.max_in_flight, int)
    assert isinstance(config.ledger.history_days, int)


def test_reference_file_parses_to_exactly_the_defaults() -> None:
    config = load_config(REFERENCE, environ={})
    assert config.source == REFERENCE
    assert dataclasses.replace(config, source=None) == load_config(None, environ={})


def test_reference_file_holds_every_key_the_loader_knows_with_its_default() -> None:
    raw = tomllib.loads(REFERENCE.read_text(encoding="utf-8"))
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            assert key in raw.get(section, {}), f"[{section}] {key} missing from hzsyncd.toml"
            assert spec.check(raw[section][key]) == spec.default, f"[{section}] {key}"
    example = raw["tables"]["org_in_flat"]
    assert example["key"] == list(TABLES["org_in_flat"].key)
    # area_code of a table has no fixed default (it follows [service]), so it is shown commented
    # out: written out, it would stop following a changed [service] area_code.
    text = REFERENCE.read_text(encoding="utf-8")
    for key in TABLE_SCHEMA:
        assert key in example or f"# {key} = " in text, f"[tables.X] {key} missing"


def test_reference_file_documents_every_key_with_a_comment() -> None:
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            key = line.split("=")[0].strip()
            if key != "key":  # explained in the comment block above [tables.org_in_flat]
                assert lines[number - 1].startswith("#"), f"{key} has no comment above it"


# --- validation messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[spool]\nsettle_secnds = 2", "[spool] settle_secnds: unknown key"),
        (
            "[servce]\ntimeout = 1",
            "[servce]: unknown section "
            "(known: service, account, spool, ledger, retry, log, tables)",
        ),
        ("timeout = 1", "timeout: unknown key outside any section"),
        ("service = 1", "[service]: must be a table, got 1"),
        (
            '[service]\narea_code = "32000"',
            '[service] area_code: must be 6 digits, got "32000"',
        ),
        (
            '[service]\narea_code = "32000a"',
            '[service] area_code: must be 6 digits, got "32000a"',
        ),
        (
            "[service]\narea_code = 320000",
            "[service] area_code: must be a string of 6 digits, got 320000",
        ),
        (
            '[service]\ntimeout = "30s"',
            '[service] timeout: must be a number > 0, got "30s"',
        ),
        ("[service]\ntimeout = 0", "[service] timeout: must be a number > 0, got 0"),
        (
            "[service]\ntimeout = true",
            "[service] timeout: must be a number > 0, got true",
        ),
        (
            "[service]\ntimeout = inf",
            "[service] timeout: must be a number > 0, got Infinity",
        ),
        (
            "[service]\ntimeout = nan",
            "[service] timeout: must be a number > 0, got NaN",
        ),
        (
            "[service]\nmax_in_flight = 0",
            "[service] max_in_flight: must be an integer from 1 to 64, got 0",
        ),
        (
            "[service]\nmax_in_flight = 65",
            "[service] max_in_flight: must be an integer from 1 to 64, got 65",
        ),
        (
            "[service]\nmax_in_flight = 4.0",
            "[service] max_in_flight: must be an integer from 1 to 64, got 4",
        ),
        (
            "[service]\nmax_in_flight = false",
            "[service] max_in_flight: must be an integer from 1 to 64, got false",
        ),
        (
            "[service]\nrate_limit = -1",
            "[service] rate_limit: must be a number >= 0, got -1",
        ),
        (
            '[service]\nwsdl = "ftp://example.org/x.wsdl"',
            '[service] wsdl: must be an http(s) URL or a file path, got "ftp://example.org/x.wsdl"',
        ),
        (
            '[service]\nwsdl = ""',
            '[service] wsdl: must be an http(s) URL or a file path, got ""',
        ),
        ("[account]\nuser_id = 7", "[account] user_id: must be a string, got 7"),
        (
            "[account]\npassword_file = []",
            "[account] password_file: must be a string, got []",
        ),
        ('[spool]\nroot = ""', '[spool] root: must be a non-empty path, got ""'),
        (
            "[spool]\nsettle_seconds = -0.5",
            "[spool] settle_seconds: must be a number >= 0, got -0.5",
        ),
        (
            "[spool]\nrescan_seconds = 0",
            "[spool] rescan_seconds: must be a number > 0, got 0",
        ),
        (
            '[spool]\nobserver = "poll"',
            '[spool] observer: must be one of "auto", "inotify", "polling", got "poll"',
        ),
        (
            '[spool]\nencoding = "gbk"',
            '[spool] encoding: must be one of "auto", "utf-8", "gb18030", got "gbk"',
        ),
        (
            "[spool]\nincomplete_seconds = -1",
            "[spool] incomplete_seconds: must be a number >= 0, got -1",
        ),
        ("[ledger]\npath = 1", "[ledger] path: must be a non-empty path, got 1"),
        (
            "[ledger]\nhistory_days = -1",
            "[ledger] history_days: must be an integer >= 0, got -1",
        ),
        (
            "[ledger]\nhistory_days = 1.5",
            "[ledger] history_days: must be an integer >= 0, got 1.5",
        ),
        (
            '[ledger]\nsynchronous = "FULL"',
            '[ledger] synchronous: must be one of "normal", "full", got "FULL"',
        ),
        (
            "[retry]\nbackoff_initial = 0",
            "[retry] backoff_initial: must be a number > 0, got 0",
        ),
        (
            "[retry]\nbackoff_max = 2",
            "[retry] backoff_max: must be >= backoff_initial (5), got 2",
        ),
        (
            "[retry]\nbackoff_initial = 700",
            "[retry] backoff_max: must be >= backoff_initial (700), got 600",
        ),
        (
            "[retry]\nrelation_retry_hours = -1",
            "[retry] relation_retry_hours: must be a number >= 0, got -1",
        ),
        (
            "[retry]\nip_retry_seconds = 0",
            "[retry] ip_retry_seconds: must be a number > 0, got 0",
        ),
        (
            '[log]\ntarget = "syslog"',
            '[log] target: must be one of "auto", "journal", "stderr", got "syslog"',
        ),
        (
            '[log]\nlevel = "INFO"',
            '[log] level: must be one of "debug", "info", "warning", "error", got "INFO"',
        ),
        (
            '[tables.flat]\nkey = "flat_id"',
            "[tables.flat]: unknown table (known: flat_info, service_org_info, "
            "org_info, org_in_flat, service_item, service_activity, service_credit)",
        ),
        ("tables = 1", "[tables]: must be a table, got 1"),
        ("[tables]\norg_info = 1", "[tables.org_info]: must be a table, got 1"),
        ("[tables.org_info]\nkeys = []", "[tables.org_info] keys: unknown key"),
        (
            "[tables.org_info]\nkey = []",
            "[tables.org_info] key: must be a field name or a non-empty list of "
            "field names, got []",
        ),
        (
            '[tables.org_info]\nkey = ["org_id", 3]',
            "[tables.org_info] key: must be a field name or a non-empty list of "
            'field names, got ["org_id", 3]',
        ),
        (
            '[tables.org_info]\nkey = ""',
            "[tables.org_info] key: must be a field name or a non-empty list of "
            'field names, got ""',
        ),
        (
            '[tables.org_info]\narea_code = "3200"',
            '[tables.org_info] area_code: must be 6 digits, got "3200"',
        ),
    ],
)
def test_each_wrong_value_gives_one_exact_message(text: str, message: str) -> None:
    assert problems(text) == [f"hzsyncd.toml: {message}"]


def test_all_problems_are_listed_at_once_in_file_order() -> None:
    text = """
[service]
area_code = "32000"
timeout = "30s"
[spool]
settle_secnds = 2
observer = "poll"
[tables.nope]
[retry]
backoff_max = 1
"""
    assert problems(text) == [
        'hzsyncd.toml: [service] area_code: must be 6 digits, got "32000"',
        'hzsyncd.toml: [service] timeout: must be a number > 0, got "30s"',
        "hzsyncd.toml: [spool] settle_secnds: unknown key",
        'hzsyncd.toml: [spool] observer: must be one of "auto", "inotify", "polling", got "poll"',
        "hzsyncd.toml: [tables.nope]: unknown table (known: flat_info, service_org_info, "
        "org_info, org_in_flat, service_item, service_activity, service_credit)",
        "hzsyncd.toml: [retry] backoff_max: must be >= backoff_initial (5), got 1",
    ]


def test_a_wrong_backoff_value_is_not_compared_again() -> None:
    # backoff_max = -1 is wrong once; comparing the default 600 with 700 would only confuse.
    assert problems("[retry]\nbackoff_initial = 700\nbackoff_max = -1") == [
        "hzsyncd.toml: [retry] backoff_max: must be a number > 0, got -1"
    ]


def test_long_values_are_cut_short_in_messages() -> None:
    (line,) = problems(f'[spool]\nobserver = "{"x" * 500}"')
    assert len(line) < 200 and line.endswith(" ...")


def test_messages_name_the_file_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[spool]\nsettle_secnds = 2\n", name="site.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"{path}: [spool] settle_secnds: unknown key"


def test_toml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\ntimeout = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"{path}: invalid TOML: Invalid value (at line 2, column 11)"


def test_unreadable_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_config(tmp_path / "absent.toml", environ={})
    path = tmp_path / "gbk.toml"
    path.write_bytes('[account]\nuser_id = "服务机构"\n'.encode("gb18030"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, environ={})


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes('\ufeff[account]\nuser_id = "省平台"\n'.encode())
    assert load_config(path, environ={}).account.user_id == "省平台"


def test_config_is_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.service.timeout = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tables["org_info"] = TABLES["flat_info"]  # type: ignore[index]


# --- tables ----------------------------------------------------------------------------------


def test_table_overrides_replace_key_and_area_code_of_that_table_only() -> None:
    config = parse_config(
        """
[service]
area_code = "110000"
[tables.org_info]
key = "credit_code"
area_code = "320100"
[tables.org_in_flat]
key = ["flat_id", "credit_code"]
""",
        None,
        environ={},
    )
    assert config.tables["org_info"].key == ("credit_code",)
    assert config.tables["org_info"].method  # still a full Table
    assert config.tables["org_in_flat"].key == ("flat_id", "credit_code")
    assert config.tables["flat_info"] == TABLES["flat_info"]
    assert config.area_codes["org_info"] == "320100"
    assert config.area_codes["flat_info"] == "110000"
    assert TABLES["org_info"].key == ("org_id",)  # the built-in table is untouched


# --- lookup order ----------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """A config file in each place of the lookup order; none of them the real /etc."""
    paths = {}
    for place in ("explicit", "env", "cwd", "system"):
        folder = tmp_path / place
        folder.mkdir()
        paths[place] = write(folder, f'[account]\nuser_id = "{place}"\n')
    return paths


def test_lookup_takes_explicit_then_env_then_cwd_then_system(places: dict[str, Path]) -> None:
    env = {"HZSYNCD_CONFIG": str(places["env"])}
    cwd, system = places["cwd"].parent, places["system"]
    assert find_config(places["explicit"], env, cwd, system) == places["explicit"]
    assert find_config(None, env, cwd, system) == places["env"]
    assert find_config(None, {}, cwd, system) == cwd / "hzsyncd.toml"
    assert find_config(None, {}, places["explicit"].parent.parent, system) == system
    assert find_config(None, {"HZSYNCD_CONFIG": ""}, cwd, system) == cwd / "hzsyncd.toml"


def test_lookup_finds_nothing_and_defaults_apply(tmp_path: Path) -> None:
    assert find_config(None, {}, tmp_path, tmp_path / "etc" / "hzsyncd.toml") is None


def test_lookup_uses_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "")
    assert find_config(None, {}, system=tmp_path / "none") == tmp_path / "hzsyncd.toml"


def test_explicit_or_env_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing.toml: config file not found \(given by -c"):
        find_config(missing, {}, tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found \(given by \$HZSYNCD_CONFIG\)"):
        find_config(None, {"HZSYNCD_CONFIG": str(missing)}, tmp_path)
    with pytest.raises(ConfigError, match="config file is not a file"):
        find_config(tmp_path, {}, tmp_path)


# --- paths -----------------------------------------------------------------------------------


def test_relative_paths_count_from_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "pw").write_text(SECRET + "\n")
    path = write(
        folder,
        """
[service]
wsdl = "wsdl/ReportService.wsdl"
[account]
password_file = "pw"
[spool]
root = "../spool"
[ledger]
path = "/abs/ledger.db"
""",
    )
    config = load_config(path, environ={})
    assert config.service.wsdl == str(folder / "wsdl/ReportService.wsdl")
    assert config.account.password_file == folder / "pw"
    assert config.spool.root == folder / "../spool"
    assert config.ledger.path == Path("/abs/ledger.db")


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[spool]\nroot = "spool"\n')
    assert load_config(Path("hzsyncd.toml"), environ={}).spool.root == tmp_path / "spool"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/services/ReportService?wsdl", "HTTPS://x/y?wsdl", "file:///srv/x.wsdl"],
)
def test_wsdl_urls_are_kept_as_written(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[service]\nwsdl = "{url}"\n')
    assert load_config(path, environ={}).service.wsdl == url


# --- overrides -------------------------------------------------------------------------------


def test_overrides_win_over_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[spool]\nroot = "/from/file"\nsettle_seconds = 7\n')
    config = load_config(
        path,
        environ={},
        overrides={
            "spool": {"root": tmp_path / "demo", "settle_seconds": None},
            "service": {"wsdl": "http://127.0.0.1:1/services/ReportService?wsdl"},
            "tables": {"org_info": {"key": ["code"]}},
        },
    )
    assert config.spool.root == tmp_path / "demo"
    assert config.spool.settle_seconds == 7
    assert config.service.wsdl == "http://127.0.0.1:1/services/ReportService?wsdl"
    assert config.tables["org_info"].key == ("code",)


def test_overrides_are_checked_and_named_as_overrides() -> None:
    assert problems("", overrides={"spool": {"rescan_seconds": 0, "colour": 1}, "x": {}}) == [
        "override: [spool] rescan_seconds: must be a number > 0, got 0",
        "override: [spool] colour: unknown key",
        "override: [x]: unknown section "
        "(known: service, account, spool, ledger, retry, log, tables)",
    ]


def test_relative_override_paths_count_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={}, overrides={"ledger": {"path": "l.db"}})
    assert config.ledger.path == tmp_path / "l.db"


# --- password --------------------------------------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "hzsyncd-password").write_text("from-credential\n")
    return folder


def test_password_from_the_file(credentials: Path) -> None:
    env = {"HZSYNCD_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(credentials)}
    account = parse_config(f'[account]\npassword = "{SECRET}"', None, env).account
    assert (account.password, account.password_source) == (SECRET, "password")


def test_password_file_comes_before_env_and_credential(tmp_path: Path, credentials: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\r\n")
    path = write(tmp_path, '[account]\npassword_file = "pw"\n')
    env = {"HZSYNCD_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(credentials)}
    account = load_config(path, environ=env).account
    assert (account.password, account.password_source) == (SECRET, "password_file")
    assert account.password_file == tmp_path / "pw"


def test_env_password_comes_before_the_credential(credentials: Path) -> None:
    env = {"HZSYNCD_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(credentials)}
    account = load_config(None, environ=env).account
    assert (account.password, account.password_source) == ("from-env", "$HZSYNCD_PASSWORD")


def test_systemd_credential_is_the_last_source(credentials: Path) -> None:
    account = load_config(None, environ={"CREDENTIALS_DIRECTORY": str(credentials)}).account
    assert account.password == "from-credential"
    assert account.password_source == "credential hzsyncd-password"


def test_credentials_directory_without_our_credential_means_no_password(tmp_path: Path) -> None:
    account = load_config(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}).account
    assert (account.password, account.password_source) == (None, "none")


def test_password_and_password_file_together_are_an_error() -> None:
    text = f'[account]\npassword = "{SECRET}"\npassword_file = "/etc/hzsyncd/pw"'
    assert problems(text) == [
        "hzsyncd.toml: [account] password_file: cannot be set together with password"
    ]


def test_empty_systemd_credential_means_no_password_yet(tmp_path: Path) -> None:
    folder = tmp_path / "credentials"
    folder.mkdir()
    (folder / "hzsyncd-password").write_text("")
    config = parse_config("", None, {"CREDENTIALS_DIRECTORY": str(folder)})
    assert (config.account.password, config.account.password_source) == (None, "none")


def test_unreadable_or_empty_password_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    assert problems(f'[account]\npassword_file = "{missing}"') == [
        f'hzsyncd.toml: [account] password_file: cannot read "{missing}": No such file or directory'
    ]
    # A folder stands for an unreadable file: tests may run as root, who reads any file.
    assert problems(f'[account]\npassword_file = "{tmp_path}"') == [
        f'hzsyncd.toml: [account] password_file: cannot read "{tmp_path}": Is a directory'
    ]
    (tmp_path / "empty").write_text("\n")
    assert problems(f'[account]\npassword_file = "{tmp_path / "empty"}"') == [
        f'hzsyncd.toml: [account] password_file: "{tmp_path / "empty"}" is empty'
    ]


def test_unreadable_credential_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "hzsyncd-password").mkdir()
    with pytest.raises(ConfigError, match='^credential hzsyncd-password: cannot read "'):
        load_config(None, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_password_never_shows_in_repr_str_describe_or_errors() -> None:
    config = parse_config(
        f'[account]\nuser_id = "u"\npassword = "{SECRET}"', Path("x.toml"), environ={}
    )
    assert config.account.password == SECRET
    for text in (repr(config), str(config), repr(config.account), "\n".join(config.describe())):
        assert SECRET not in text
    assert "account.password = *** (from password)" in config.describe()
    # a wrong type is reported without its value, which may be the password
    lines = problems(f'[account]\npassword = ["{SECRET}"]\nuser_id = "{SECRET[:3]}"\nx = 1')
    assert lines == [
        "hzsyncd.toml: [account] password: must be a string",
        "hzsyncd.toml: [account] x: unknown key",
    ]


# --- describe --------------------------------------------------------------------------------


def test_describe_lists_every_key_as_section_dot_key() -> None:
    config: Config = load_config(None, environ={})
    lines = config.describe()
    keys = [line.split(" = ")[0] for line in lines]
    expected = [f"{section}.{key}" for section, ks in SCHEMA.items() for key in ks]
    expected += [f"tables.{name}.{key}" for name in TABLES for key in TABLE_SCHEMA]
    assert keys == expected
    assert 'spool.root = "/var/spool/hzsyncd"' in lines
    assert "service.timeout = 30" in lines
    assert "account.password = (not set)" in lines
    assert 'tables.org_in_flat.key = ["flat_id", "org_id"]' in lines
