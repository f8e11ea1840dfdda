"""Read hzsyncd.toml into frozen objects, checking every key and reporting all problems at once."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hzsyncd.errors import ConfigError
from hzsyncd.tables import TABLES, Table

SYSTEM_CONFIG = Path("/etc/hzsyncd/hzsyncd.toml")
CONFIG_NAME = "hzsyncd.toml"
CREDENTIAL = "hzsyncd-password"
DEFAULT_WSDL = "http://jshz.sme.gov.cn/services/ReportService?wsdl"

Check = Callable[[Any], Any]
_URL = re.compile(r"(?i)(https?|file):")


@dataclass(frozen=True)
class ServiceConfig:
    wsdl: str
    endpoint: str
    area_code: str
    timeout: float
    max_in_flight: int
    rate_limit: float


@dataclass(frozen=True)
class AccountConfig:
    """The account of the IP allow-list operations; the password never shows in repr or str."""

    user_id: str
    password: str | None = field(repr=False)
    password_source: str  # password, password_file, $HZSYNCD_PASSWORD, credential ..., none
    password_file: Path | None = None  # the file it was read from, if any


@dataclass(frozen=True)
class SpoolConfig:
    root: Path
    settle_seconds: float
    rescan_seconds: float
    observer: str
    encoding: str
    incomplete_seconds: float


@dataclass(frozen=True)
class LedgerConfig:
    path: Path
    history_days: int
    synchronous: str


@dataclass(frozen=True)
class RetryConfig:
    backoff_initial: float
    backoff_max: float
    relation_retry_hours: float
    ip_retry_seconds: float


@dataclass(frozen=True)
class LogConfig:
    target: str
    level: str


class _Invalid(Exception):
    """A value failed its check; the message says what was expected and what was given."""


def _show(value: object) -> str:
    """A value for messages: as JSON, which writes these types as TOML does; cut short."""
    value = int(value) if isinstance(value, float) and value.is_integer() else value  # 30, not 30.0
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:76] + " ..."


def _rule(what: str, ok: Check, to: Check | None = None, show: bool = True) -> Check:
    """A check that keeps a value passing `ok`, converted `to` a type, and explains any other."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise _Invalid(f"must be {what}" + (f", got {_show(value)}" if show else ""))
        return to(value) if to else value

    return check


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but `timeout = true` is a mistake, not 1 second.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(low: int, high: int) -> Check:
    wanted = f"an integer from {low} to {high}" if high < 2**63 else f"an integer >= {low}"
    return _rule(wanted, lambda v: _is_number(v) and isinstance(v, int) and low <= v <= high)


def _choice(*allowed: str) -> Check:
    wanted = "one of " + ", ".join(f'"{a}"' for a in allowed)
    return _rule(wanted, lambda v: isinstance(v, str) and v in allowed)


def _text(value: Any) -> bool:
    return isinstance(value, str | Path) and str(value).strip() != ""


def _area_code(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string of 6 digits, got {_show(value)}")
    if not re.fullmatch(r"[0-9]{6}", value):
        raise _Invalid(f"must be 6 digits, got {_show(value)}")
    return value


_POSITIVE = _rule("a number > 0", lambda v: _is_number(v) and v > 0, float)
_NON_NEGATIVE = _rule("a number >= 0", lambda v: _is_number(v) and v >= 0, float)
_FIELDS = _rule(
    "a field name or a non-empty list of field names",
    lambda v: _text(v) or (isinstance(v, list) and bool(v) and all(_text(f) for f in v)),
    lambda v: tuple(v) if isinstance(v, list) else (str(v),),
)
# A wrong password is not shown: it may be the password, or close to it.
_SECRET = _rule("a string", lambda v: isinstance(v, str), show=False)
_STRING = _rule("a string", lambda v: isinstance(v, str | Path), str)
_PATH = _rule("a non-empty path", _text, Path)
_WSDL = _rule(
    "an http(s) URL or a file path",
    lambda v: _text(v) and (_URL.match(str(v)) is not None or "://" not in str(v)),
    str,
)


@dataclass(frozen=True)
class Key:
    """One config key: its default (None: derived from elsewhere) and the check that cleans it."""

    default: Any
    check: Check
    relative: bool = False  # a path: relative ones count from the config file's folder


# The one description of the file: the loader, `describe()` and the test that keeps the annotated
# reference hzsyncd.toml complete all iterate it.
SCHEMA: dict[str, dict[str, Key]] = {
    "service": {
        "wsdl": Key(DEFAULT_WSDL, _WSDL, relative=True),
        "endpoint": Key("", _STRING),
        "area_code": Key("320000", _area_code),
        "timeout": Key(30.0, _POSITIVE),
        "max_in_flight": Key(4, _integer(1, 64)),
        "rate_limit": Key(0.0, _NON_NEGATIVE),
    },
    "account": {
        "user_id": Key("", _STRING),
        "password": Key("", _SECRET),
        "password_file": Key("", _STRING, relative=True),
    },
    "spool": {
        "root": Key(Path("/var/spool/hzsyncd"), _PATH, relative=True),
        "settle_seconds": Key(2.0, _NON_NEGATIVE),
        "rescan_seconds": Key(60.0, _POSITIVE),
        "observer": Key("auto", _choice("auto", "inotify", "polling")),
        "encoding": Key("auto", _choice("auto", "utf-8", "gb18030")),
        "incomplete_seconds": Key(300.0, _NON_NEGATIVE),
    },
    "ledger": {
        "path": Key(Path("/var/lib/hzsyncd/ledger.db"), _PATH, relative=True),
        "history_days": Key(0, _integer(0, 2**63)),
        "synchronous": Key("normal", _choice("normal", "full")),
    },
    "retry": {
        "backoff_initial": Key(5.0, _POSITIVE),
        "backoff_max": Key(600.0, _POSITIVE),
        "relation_retry_hours": Key(24.0, _NON_NEGATIVE),
        "ip_retry_seconds": Key(300.0, _POSITIVE),
    },
    "log": {
        "target": Key("auto", _choice("auto", "journal", "stderr")),
        "level": Key("info", _choice("debug", "info", "warning", "error")),
    },
}
# [tables.X]: the defaults are the table's built-in key and [service] area_code.
TABLE_SCHEMA: dict[str, Key] = {"key": Key(None, _FIELDS), "area_code": Key(None, _area_code)}


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, None for built-in defaults."""

    service: ServiceConfig
    account: AccountConfig
    spool: SpoolConfig
    ledger: LedgerConfig
    retry: RetryConfig
    log: LogConfig
    tables: Mapping[str, Table]
    area_codes: Mapping[str, str]
    source: Path | None = None

    def describe(self) -> list[str]:
        """`section.key = value` lines for `hzsyncd check`; the password shows as ***."""
        lines = []
        for section, keys in SCHEMA.items():
            for key in keys:
                value = getattr(getattr(self, section), key)
                shown = _show("" if value is None else value)
                if key == "password":
                    shown = f"*** (from {self.account.password_source})" if value else "(not set)"
                lines.append(f"{section}.{key} = {shown}")
        for name, table in self.tables.items():
            lines.append(f"tables.{name}.key = {_show(table.key)}")
            lines.append(f"tables.{name}.area_code = {_show(self.area_codes[name])}")
        return lines


def find_config(
    explicit: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
    system: Path | None = None,
) -> Path | None:
    """The config file: -c/--config, $HZSYNCD_CONFIG, ./hzsyncd.toml, /etc/hzsyncd/hzsyncd.toml;
    None if there is none (defaults apply). `system` replaces the /etc path in tests. A file named
    by -c or the environment must exist: running on defaults instead would surprise."""
    env = environ.get("HZSYNCD_CONFIG")
    for path, given_by in ((explicit, "-c/--config"), (env and Path(env), "$HZSYNCD_CONFIG")):
        if path:
            if not path.is_file():
                what = "is not a file" if path.exists() else "not found"
                raise ConfigError(f"{path}: config file {what} (given by {given_by})")
            return path
    for candidate in ((cwd or Path.cwd()) / CONFIG_NAME, system or SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(
    path: Path | None,
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read and check the file at `path` (None: the defaults); ConfigError lists every problem."""
    if path is None:
        return parse_config("", None, environ, overrides)
    try:
        # utf-8-sig: editors on Windows save a BOM, which tomllib would call a syntax error.
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8, as TOML files must be") from None
    return parse_config(text, path, environ, overrides)


# (section, key) -> (the checked value, what messages name as its origin: the file or "override")
_Given = dict[tuple[str, str], tuple[Any, str]]
_Toml = Mapping[str, Any]
_INVALID = object()  # stands for a value that failed its check


def parse_config(
    text: str,
    source: Path | None,
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Check and build a Config from TOML text; `overrides` (None values ignored) win over it.
    Relative paths in overrides, which come from a command line, count from the current folder."""
    label = str(source) if source is not None else CONFIG_NAME
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    given: _Given = {}
    problems: list[str] = []
    _collect(data, label, source.absolute().parent if source else Path.cwd(), given, problems)
    _collect(overrides or {}, "override", Path.cwd(), given, problems)
    values = {section: {k: s.default for k, s in keys.items()} for section, keys in SCHEMA.items()}
    for (section, key), (value, _) in given.items():
        if value is not _INVALID:
            values.setdefault(section, {})[key] = value
    retry = values["retry"]
    high, low = (given.get(("retry", k), (0, "")) for k in ("backoff_max", "backoff_initial"))
    if retry["backoff_max"] < retry["backoff_initial"] and _INVALID not in (high[0], low[0]):
        problems.append(
            f"{high[1] or low[1]}: [retry] backoff_max: must be >= backoff_initial "
            f"({_show(retry['backoff_initial'])}), got {_show(retry['backoff_max'])}"
        )
    account = _account(values["account"], given, environ, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    tables: dict[str, Table] = {}
    area_codes: dict[str, str] = {}
    for name, table in TABLES.items():
        mine = values.get(f"tables.{name}", {})
        tables[name] = dataclasses.replace(table, key=mine["key"]) if "key" in mine else table
        area_codes[name] = mine.get("area_code", values["service"]["area_code"])
    return Config(
        service=ServiceConfig(**values["service"]),
        account=account,
        spool=SpoolConfig(**values["spool"]),
        ledger=LedgerConfig(**values["ledger"]),
        retry=RetryConfig(**retry),
        log=LogConfig(**values["log"]),
        tables=types.MappingProxyType(tables),
        area_codes=types.MappingProxyType(area_codes),
        source=source,
    )


def _collect(data: _Toml, label: str, base: Path, given: _Given, problems: list[str]) -> None:
    """Check `data` into `given` ([tables.X] as section "tables.X"), paths relative to `base`."""
    for section, body in data.items():
        groups: list[tuple[str, Any, Mapping[str, Key] | None]]
        if section == "tables" and isinstance(body, Mapping):
            groups = [(f"tables.{name}", entry, TABLE_SCHEMA) for name, entry in body.items()]
        else:
            groups = [(section, body, SCHEMA.get(section, {} if section == "tables" else None))]
        for name, entry, schema in groups:
            where = f"{label}: [{name}]"
            if schema is None and isinstance(entry, Mapping):
                problems.append(f"{where}: unknown section (known: {', '.join(SCHEMA)}, tables)")
            elif schema is None:
                problems.append(f"{label}: {name}: unknown key outside any section")
            elif name.startswith("tables.") and name.removeprefix("tables.") not in TABLES:
                problems.append(f"{where}: unknown table (known: {', '.join(TABLES)})")
            elif not isinstance(entry, Mapping):
                problems.append(f"{where}: must be a table, got {_show(entry)}")
            else:
                for key, value in entry.items():
                    if key not in schema:
                        problems.append(f"{where} {key}: unknown key")
                    elif value is not None:  # only overrides hold None: "not given"
                        try:
                            value = schema[key].check(value)
                        except _Invalid as exc:
                            problems.append(f"{where} {key}: {exc}")
                            value = _INVALID
                        if schema[key].relative and value is not _INVALID:
                            value = _resolve(value, base)
                        given[name, key] = (value, label)


def _resolve(value: str | Path, base: Path) -> Any:
    """A relative path made absolute against `base`; URLs and "" (not set) stay as they are."""
    if value == "" or _URL.match(str(value)) or Path(value).is_absolute():
        return value
    return type(value)(base / value)


def _account(
    account: dict[str, Any], given: _Given, environ: Mapping[str, str], problems: list[str]
) -> AccountConfig:
    """The password: password or password_file, $HZSYNCD_PASSWORD, or the systemd credential."""
    user_id, password, file = account["user_id"], account["password"], account["password_file"]
    where = f"{given[('account', 'password_file')][1]}: [account] password_file" if file else ""
    if password and file:
        problems.append(f"{where}: cannot be set together with password")
    elif password:
        return AccountConfig(user_id, password, "password")
    elif file:
        secret = _read(Path(file), where, problems)
        return AccountConfig(user_id, secret, "password_file", Path(file))
    elif environ.get("HZSYNCD_PASSWORD"):
        return AccountConfig(user_id, environ["HZSYNCD_PASSWORD"], "$HZSYNCD_PASSWORD")
    elif environ.get("CREDENTIALS_DIRECTORY"):
        # systemd LoadCredential= puts it here; no such file means no credential was configured.
        path = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL
        # An empty one is "not set yet": tmpfiles.d creates it empty so that the unit can start
        # before the admin has a password, which only the IP commands need.
        if os.path.lexists(path) and (not path.is_file() or path.stat().st_size > 0):
            source = f"credential {CREDENTIAL}"
            return AccountConfig(user_id, _read(path, source, problems), source, path)
    return AccountConfig(user_id, None, "none")


def _read(path: Path, where: str, problems: list[str]) -> str | None:
    """A secret from a file, trailing newlines stripped (echo adds one)."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        problems.append(f'{where}: cannot read "{path}": {reason}')
        return None
    if not secret:
        problems.append(f'{where}: "{path}" is empty')
    return secret or None
