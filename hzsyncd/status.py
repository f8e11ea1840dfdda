"""`status`, `failures` and `history`: what the ledger and the spool say, for people."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from hzsyncd.config import Config
from hzsyncd.ledger import Ledger, Reports
from hzsyncd.lock import Busy, owner_lock
from hzsyncd.spool import Spool, name_kind

COLUMNS = ("waiting", "pending", "ok", "duplicate", "rejected", "deferred")


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def daemon_state(config: Config, ledger: Ledger) -> dict[str, Any]:
    """Whether a daemon owns the spool now, and the state it last recorded."""
    recorded = json.loads(ledger.get_meta("daemon_state") or "{}")
    try:
        with owner_lock(config.spool.root, config.ledger.path):
            running = None
    except Busy as exc:
        running = str(exc)
    return {"running": running, **recorded}


def table_status(config: Config, ledger: Ledger) -> dict[str, dict[str, int]]:
    summary = Reports(ledger).table_summary()
    spool = Spool(config.spool.root, config.tables)
    rows: dict[str, dict[str, int]] = {}
    for name in config.tables:
        counts = summary.get(name, {})
        rows[name] = {
            "waiting": 0,
            "pending": counts.get("pending", 0) + counts.get("sending", 0),
            "ok": counts.get("ok", 0),
            "duplicate": counts.get("duplicate", 0),
            "rejected": counts.get("rejected", 0),
            "deferred": counts.get("deferred", 0),
        }
    for folder in spool.drop_folders():
        for place in (folder.path, folder.work_dir):
            if place.is_dir():
                rows[folder.table.name]["waiting"] += sum(
                    1 for p in place.iterdir() if name_kind(p.name) == "accept"
                )
    return rows


def print_status(config: Config, ledger: Ledger, as_json: bool) -> None:
    state = daemon_state(config, ledger)
    rows = table_status(config, ledger)
    if as_json:
        click.echo(json.dumps({"daemon": state, "tables": rows}, ensure_ascii=False, indent=2))
        return
    if state["running"]:
        click.echo(f"daemon: {state['running']}; {state.get('status', 'state unknown')}")
    else:
        click.echo(
            f"daemon: not running (last: {state.get('status', 'never ran')}, "
            f"{_when(state.get('updated_at'))})"
        )
    if state.get("last_error"):
        click.echo(f"last error: {state['last_error']} ({_when(state.get('error_at'))})")
    click.echo(f"{'table':18}" + "".join(f"{c:>10}" for c in COLUMNS))
    for name, row in rows.items():
        click.echo(f"{name:18}" + "".join(f"{row[c]:>10}" for c in COLUMNS))


def print_failures(ledger: Ledger, limit: int, as_json: bool) -> None:
    reports = Reports(ledger)
    records, files = reports.rejected(limit), reports.failed_files(limit)
    if as_json:
        click.echo(
            json.dumps(
                {"records": records, "files": files}, ensure_ascii=False, indent=2, default=str
            )
        )
        return
    for row in files:
        click.echo(
            f"{row['table_name']}/{row['op']} {row['name']}: file refused: "
            f"{row['reason']} → {row['dest']}"
        )
    for row in records:
        messages = "; ".join(json.loads(row["messages"] or "[]"))
        code = f" [{row['code']}]" if row["code"] else ""
        click.echo(
            f"{row['table_name']} {row['file']}:{row['line']} key={row['key']}{code}: {messages}"
        )
    if not records and not files:
        click.echo("no failures")


def print_history(ledger: Ledger, table: str, key: str, as_json: bool) -> None:
    reports = Reports(ledger)
    rows, current = reports.history(table, key), reports.current(table, key)
    if as_json:
        click.echo(
            json.dumps(
                {"current": current, "records": rows}, ensure_ascii=False, indent=2, default=str
            )
        )
        return
    if current:
        click.echo(
            f"{table} key={key}: last accepted: {current['op']} "
            f"(hash {current['hash'][:12]}…) at {_when(current['accepted_at'])}"
        )
    else:
        click.echo(f"{table} key={key}: nothing accepted")
    for row in rows:
        messages = "; ".join(json.loads(row["messages"] or "[]"))
        outcome = row["outcome"] if row["state"] == "final" else row["state"]
        click.echo(
            f"  {_when(row['created_at'])} {row['op']:6} {row['file']}:{row['line']} "
            f"{outcome}{': ' + messages if messages else ''}"
            f" (hash {str(row['hash'])[:12]}…, {row['attempts']} call(s))"
        )
        for attempt in row["tries"]:
            answer = attempt["response"] if attempt["response"] else "''"
            click.echo(f"      {_when(attempt['at'])} {attempt['outcome']}: {answer}")
