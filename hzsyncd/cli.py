"""The `hzsyncd` command: parse, load config, call one function, map errors to exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hzsyncd import __version__, logs
from hzsyncd.config import Config, find_config, load_config
from hzsyncd.errors import (
    ConfigError,
    HzsyncdError,
    InputError,
    IpDenied,
    LedgerError,
    SpoolError,
    TransportFailure,
)
from hzsyncd.lock import Busy, LockError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES: tuple[tuple[type[HzsyncdError], int], ...] = (
    (Busy, 2),
    (LockError, 2),
    (IpDenied, 4),
    (TransportFailure, 3),
    (ConfigError, 2),
    (LedgerError, 2),
    (SpoolError, 2),
    (InputError, 1),
)


def expected_errors(func: F) -> F:
    """Print an expected error as one line (no traceback) and exit with its code (DESIGN §7)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HzsyncdError as exc:
            code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)
            click.echo(f"hzsyncd: {exc}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Config file (default: $HZSYNCD_CONFIG, ./hzsyncd.toml, /etc/hzsyncd/hzsyncd.toml).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def load(config_path: Path | None, **overrides: dict[str, Any]) -> Config:
    config = load_config(find_config(config_path), overrides=overrides or None)
    logs.setup(config.log.target, config.log.level)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hzsyncd")
def main() -> None:
    """Report JSON files dropped in spool folders to the national SME ReportService.

    Every record is one SOAP call, sent exactly once; a SQLite ledger remembers what was sent,
    and each file ends in done/ or failed/ (with a report of what to fix).
    """


@main.command()
@config_option
@expected_errors
def run(config_path: Path | None) -> None:
    """Run the daemon in the foreground (systemd Type=notify): watch the drop folders and
    report every file dropped in them. SIGHUP reloads the config; SIGTERM stops cleanly."""
    from hzsyncd.daemon import Daemon

    source = find_config(config_path)
    config = load(config_path)
    sys.exit(Daemon(config, source).run())


@main.command()
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--table", help="Table of files outside a drop folder (e.g. org_info).")
@click.option("--delete", is_flag=True, help="With --table: the files hold deletions.")
@json_option
@expected_errors
def send(
    config_path: Path | None,
    files: tuple[Path, ...],
    table: str | None,
    delete: bool,
    as_json: bool,
) -> None:
    """Send FILES once through the ledger; unfinished files are put back.

    Exit 0 all done, 1 records rejected or deferred, 2 usage or configuration error,
    3 service unreachable (records left pending), 4 this host's IP not allowed.
    """
    from hzsyncd.report import print_send_result
    from hzsyncd.send import send_files
    from hzsyncd.session import open_session

    config = load(config_path)
    with open_session(config) as session:
        result = send_files(session, list(files), table, delete)
    print_send_result(result, as_json)
    sys.exit(result.exit_code)


@main.command()
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--table", help="Check key fields of this table (default: from the folder).")
@json_option
@expected_errors
def validate(
    config_path: Path | None, files: tuple[Path, ...], table: str | None, as_json: bool
) -> None:
    """Parse and check FILES locally, without sending anything.

    Exit 0 when every record is usable, 1 when some are not.
    """
    from hzsyncd.validate import print_validation, validate_files

    config = load(config_path)
    results = validate_files(config, list(files), table)
    print_validation(results, as_json)
    sys.exit(0 if all(r.ok for r in results) else 1)


@main.command()
@config_option
@click.option("--new-ledger", is_flag=True, help="Create a new ledger even where done/ has files.")
@expected_errors
def init(config_path: Path | None, new_ledger: bool) -> None:
    """Create the spool folders and the ledger."""
    from hzsyncd.session import open_ledger
    from hzsyncd.spool import Spool

    config = load(config_path)
    spool = Spool(config.spool.root, config.tables)
    created = spool.init()
    for path in created:
        click.echo(f"created {path}")
    existed = config.ledger.path.exists()
    open_ledger(config, spool, create_new=new_ledger).close()
    click.echo(f"ledger {config.ledger.path} {'ok' if existed else 'created'}")


@main.command()
@config_option
@json_option
@expected_errors
def status(config_path: Path | None, as_json: bool) -> None:
    """Per table: files waiting, records pending, sent, duplicate, rejected, deferred; whether
    the daemon runs, and its state (paused and why)."""
    from hzsyncd.ledger import Ledger
    from hzsyncd.status import print_status

    config = load(config_path)
    with Ledger.open(config.ledger.path, create=False) as ledger:
        print_status(config, ledger, as_json)


@main.command()
@config_option
@click.option("--limit", default=200, show_default=True, help="At most this many of each kind.")
@json_option
@expected_errors
def failures(config_path: Path | None, limit: int, as_json: bool) -> None:
    """What failed and why: rejected records with the server's messages, files refused whole."""
    from hzsyncd.ledger import Ledger
    from hzsyncd.status import print_failures

    config = load(config_path)
    with Ledger.open(config.ledger.path, create=False) as ledger:
        print_failures(ledger, limit, as_json)


@main.command()
@config_option
@click.argument("table")
@click.argument("key")
@json_option
@expected_errors
def history(config_path: Path | None, table: str, key: str, as_json: bool) -> None:
    """One record's story: every version of TABLE KEY, its files, calls and answers.

    A composite key is written with `|`: hzsyncd history org_in_flat 'F1|O1'."""
    from hzsyncd.ledger import Ledger
    from hzsyncd.status import print_history

    config = load(config_path)
    if table not in config.tables:
        raise ConfigError(f"{table}: unknown table; known: {', '.join(config.tables)}")
    with Ledger.open(config.ledger.path, create=False) as ledger:
        print_history(ledger, table, key, as_json)


@main.command()
@config_option
@click.option("--table", help="Only this table.")
@click.option("--key", help="Only this key (with --table).")
@expected_errors
def retry(config_path: Path | None, table: str | None, key: str | None) -> None:
    """Send again the records the server rejected (e.g. after its rules were fixed).

    Takes the spool like the daemon does: stop the daemon first. Records refused locally (not
    JSON, no key) are not retried; fix them and drop them again."""
    from hzsyncd.retry import retry_rejected
    from hzsyncd.session import open_session

    config = load(config_path)
    with open_session(config) as session:
        retried = retry_rejected(session, table, key)
    for item in retried:
        click.echo(f"{item.table} key={item.key} ({item.file}): {item.verdict}")
    click.echo(f"{len(retried)} record(s) retried")
    sys.exit(1 if any(not r.verdict.startswith("accepted") for r in retried) else 0)


@main.command()
@config_option
@expected_errors
def check(config_path: Path | None) -> None:
    """Check config, folders, ledger, WSDL reachable and this host's IP allowed.

    Exit 0 when all is well, else the code of the first problem (2, 3 or 4)."""
    from hzsyncd.check import print_checks, run_checks

    config = load(config_path)
    sys.exit(print_checks(run_checks(config)))


@main.group()
def ip() -> None:
    """The IP allow-list of the account in [account] (addIP, delIP, getIP)."""


ADD_IP_CODES = {
    1: "registered",
    -1: "wrong user or password",
    -2: "account disabled",
    -3: "already on the list",
}
DEL_IP_CODES = {1: "deleted", -1: "wrong user or password", -2: "account disabled"}


def _account_client(config_path: Path | None) -> tuple[Config, Any]:
    from hzsyncd.session import make_client

    config = load(config_path)
    if not config.account.user_id or config.account.password is None:
        raise ConfigError(
            "[account] user_id and a password (password, password_file, $HZSYNCD_PASSWORD or "
            "the hzsyncd-password credential) are needed for the IP operations"
        )
    return config, make_client(config)


def _ip_exit(code: int, words: dict[int, str]) -> None:
    click.echo(f"{code}: {words.get(code, 'unknown answer')}")
    sys.exit(0 if code in (1, -3) else 2)


@ip.command("list")
@config_option
@expected_errors
def ip_list(config_path: Path | None) -> None:
    """Print the IP addresses on the allow-list."""
    config, client = _account_client(config_path)
    assert config.account.password is not None
    found = client.get_ip(config.account.user_id, config.account.password)
    if isinstance(found, int):
        _ip_exit(found, DEL_IP_CODES)
    for address in found:
        click.echo(address)


@ip.command("add")
@config_option
@click.argument("address")
@expected_errors
def ip_add(config_path: Path | None, address: str) -> None:
    """Add ADDRESS to the allow-list (1 registered, -1 wrong user/password, -2 disabled,
    -3 already present)."""
    config, client = _account_client(config_path)
    assert config.account.password is not None
    _ip_exit(client.add_ip(config.account.user_id, config.account.password, address), ADD_IP_CODES)


@ip.command("del")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@expected_errors
def ip_del(config_path: Path | None, addresses: tuple[str, ...]) -> None:
    """Remove ADDRESSES from the allow-list (1 deleted, -1 wrong user/password, -2 disabled)."""
    config, client = _account_client(config_path)
    assert config.account.password is not None
    code = client.del_ip(config.account.user_id, config.account.password, list(addresses))
    _ip_exit(code, DEL_IP_CODES)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--style",
    type=click.Choice(["rpc", "document"]),
    default="rpc",
    show_default=True,
    help="rpc: Apache Axis rpc/encoded; document: JAX-WS document/literal wrapped.",
)
@click.option(
    "--account",
    "accounts",
    multiple=True,
    metavar="USER:PASSWORD:AREA[:disabled]",
    help="An account (repeatable; default demo:demo:320000).",
)
@click.option("--allow", multiple=True, metavar="IP", help="Initially allowed IP (repeatable).")
@click.option(
    "--receipts",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append every call to this NDJSON file.",
)
@click.option("--latency-ms", default=0, type=int, help="Delay before each data reply.")
@click.option("--fail-every", default=0, type=int, help="Answer every Nth data call with HTTP 500.")
@click.option("--area-codes", multiple=True, metavar="CODE", help="Extra known area codes.")
def emulate(
    host: str,
    port: int,
    style: str,
    accounts: tuple[str, ...],
    allow: tuple[str, ...],
    receipts: Path | None,
    latency_ms: int,
    fail_every: int,
    area_codes: tuple[str, ...],
) -> None:
    """Serve a local ReportService sandbox (WSDL at /services/ReportService?wsdl)."""
    from hzsyncd.emulator import Account, Emulator

    try:
        parsed = [Account.parse(a) for a in accounts] or None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--account") from None
    kwargs: dict[str, Any] = {} if parsed is None else {"accounts": parsed}
    emulator = Emulator(
        host=host,
        port=port,
        style=style,
        allow=list(allow),
        receipts=receipts,
        latency_ms=latency_ms,
        fail_every=fail_every,
        area_codes=list(area_codes),
        **kwargs,
    )
    emulator.start()
    click.echo(f"ReportService emulator ({style}) at {emulator.wsdl_url}", err=True)
    emulator.serve_forever()


@main.command()
@click.option("--style", type=click.Choice(["rpc", "document"]), default="rpc", show_default=True)
@click.option("--keep", is_flag=True, help="Keep the temporary spool and print where it is.")
@json_option
@expected_errors
def demo(style: str, keep: bool, as_json: bool) -> None:
    """Run the examples end to end against a local emulator, then print a summary."""
    from hzsyncd.demo import run_demo

    sys.exit(run_demo(style=style, keep=keep, as_json=as_json))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
