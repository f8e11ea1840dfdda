"""What `send` prints: one line per file, the server's reasons under it, a closing verdict."""

from __future__ import annotations

import json
from typing import Any

import click

from hzsyncd.errors import IpDenied
from hzsyncd.send import SendResult
from hzsyncd.work import FileReport

COLUMNS = ("ok", "duplicate", "rejected", "deferred")


def columns(report: FileReport) -> dict[str, int]:
    """The four figures an admin reads; `relation` and waiting records are deferred."""
    counts = report.counts
    return {
        "ok": counts.get("ok", 0),
        "duplicate": counts.get("duplicate", 0),
        "rejected": counts.get("rejected", 0),
        "deferred": counts.get("deferred", 0) + counts.get("relation", 0),
        "pending": counts.get("pending", 0) + counts.get("sending", 0),
    }


def as_dict(report: FileReport) -> dict[str, Any]:
    return {
        "file": str(report.path),
        "table": report.table,
        "op": report.op,
        "records": report.records,
        **columns(report),
        "disposition": report.disposition,
        "dest": str(report.dest) if report.dest else None,
        "reason": report.reason,
        "rejections": report.rejections,
    }


def print_send_result(result: SendResult, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "files": [as_dict(r) for r in result.reports],
                    "stopped": str(result.stopped) if result.stopped else None,
                    "untouched": [str(p) for p in result.untouched],
                    "exit_code": result.exit_code,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    for report in result.reports:
        figures = columns(report)
        shown = ", ".join(f"{figures[c]} {c}" for c in COLUMNS if figures[c]) or "nothing sent"
        where = (
            f"{report.dest.parent.parent.name}/{report.dest.parent.name}/{report.dest.name}"
            if report.dest and report.disposition == "done"
            else f"failed/{report.dest.name}"
            if report.dest
            else report.disposition
        )
        click.echo(
            f"{report.table}/{report.op} {report.path.name}: {report.records} records: "
            f"{shown} → {where}"
        )
        if report.reason:
            click.echo(f"    {report.reason}")
        for rejection in report.rejections[:20]:
            key = f" key={rejection['key']}" if rejection.get("key") else ""
            field = f" {rejection['field']}:" if rejection.get("field") else ""
            click.echo(
                f"    line {rejection['line']}{key}:{field} "
                + "; ".join(str(m) for m in rejection["messages"])
            )
    if result.stopped is not None:
        what = (
            "this host's IP is not on the allow-list (hzsyncd ip add ...)"
            if isinstance(result.stopped, IpDenied)
            else f"service unreachable: {result.stopped}"
        )
        click.echo(
            f"stopped: {what}; {len(result.untouched)} more file(s) not tried, "
            "nothing marked failed",
            err=True,
        )
