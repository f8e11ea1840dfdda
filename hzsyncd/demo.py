"""`hzsyncd demo`: the emulator, a temporary spool and the examples, end to end, then a summary."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import click

from hzsyncd import logs
from hzsyncd.config import load_config
from hzsyncd.emulator import Emulator
from hzsyncd.errors import HzsyncdError
from hzsyncd.report import columns
from hzsyncd.send import SendResult, send_files
from hzsyncd.session import make_client, open_session
from hzsyncd.spool import Spool, name_kind
from hzsyncd.tables import DATA_METHODS, TABLES


def examples_dir() -> Path:
    """The examples beside the package (a checkout) or inside it (an installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples", here / "examples"):
        if candidate.is_dir():
            return candidate
    raise HzsyncdError("the examples folder was not found beside or inside the hzsyncd package")


def drop_examples(source: Path, spool: Spool) -> list[Path]:
    """Copy the examples into the spool, report files before delete files, in a fixed order."""
    dropped = []
    files = sorted(
        (p for p in source.rglob("*") if p.is_file() and name_kind(p.name) == "accept"),
        key=lambda p: (p.parent.name == "delete", str(p.relative_to(source))),
    )
    stamp = 1_700_000_000_000_000_000
    for number, path in enumerate(files):
        target = spool.root / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        # Distinct mtimes keep the order the examples were written for (report, then delete).
        os.utime(target, ns=(stamp + number * 1_000_000, stamp + number * 1_000_000))
        dropped.append(target)
    return dropped


def summarize(result: SendResult) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {
        name: {"files": 0, "ok": 0, "duplicate": 0, "rejected": 0, "deferred": 0, "reasons": []}
        for name in TABLES
    }
    for report in result.reports:
        row = summary[report.table]
        row["files"] += 1
        for name, value in columns(report).items():
            if name in row:
                row[name] += value
        for rejection in report.rejections:
            row["reasons"].append(
                f"{report.path.name}:{rejection['line']} key={rejection['key']}: "
                + "; ".join(rejection["messages"])
            )
    return summary


def receipts_by_table(receipts: list[dict[str, Any]]) -> Counter[str]:
    accepted: Counter[str] = Counter()
    for receipt in receipts:
        if receipt.get("method") in DATA_METHODS and receipt.get("response") == "":
            accepted[DATA_METHODS[receipt["method"]][0].name] += 1
    return accepted


def run_demo(style: str = "rpc", keep: bool = False, as_json: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hzsyncd-demo-"))
    try:
        with Emulator(port=0, style=style, receipts=workdir / "receipts.ndjson") as emulator:
            config = load_config(
                None,
                overrides={
                    "service": {"wsdl": emulator.wsdl_url},
                    "account": {"user_id": "demo", "password": "demo"},
                    "spool": {"root": str(workdir / "spool"), "settle_seconds": 0},
                    "ledger": {"path": str(workdir / "ledger.db")},
                    "log": {"target": "stderr", "level": "warning"},
                },
            )
            logs.setup("stderr", "warning")
            say = (lambda *_: None) if as_json else click.echo
            say(f"emulator ({style}) at {emulator.wsdl_url}; spool in {workdir / 'spool'}")
            spool = Spool(config.spool.root, config.tables)
            spool.init()
            files = drop_examples(examples_dir(), spool)
            say(f"dropped {len(files)} example files into {len(TABLES)} tables")
            code = make_client(config).add_ip("demo", "demo", "127.0.0.1")
            say(f"ip add 127.0.0.1 → {code} (registered)")
            with open_session(config) as session:
                result = send_files(session, files)
            summary = summarize(result)
            accepted = receipts_by_table(emulator.receipts())
        matches = all(summary[name]["ok"] == accepted[name] for name in TABLES)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "tables": summary,
                        "receipts_ok": dict(accepted),
                        "matches_receipts": matches,
                        "spool": str(workdir),
                    },
                    ensure_ascii=False,
                    indent=2,
                )
            )
        else:
            print_summary(summary, accepted, matches)
        return 0 if matches and result.stopped is None else 1
    finally:
        if keep:
            click.echo(f"kept {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def print_summary(
    summary: dict[str, dict[str, Any]], accepted: Counter[str], matches: bool
) -> None:
    click.echo("")
    click.echo(f"{'table':18} {'files':>5} {'ok':>5} {'dup':>5} {'rejected':>8} {'deferred':>8}")
    for name, row in summary.items():
        click.echo(
            f"{name:18} {row['files']:>5} {row['ok']:>5} {row['duplicate']:>5} "
            f"{row['rejected']:>8} {row['deferred']:>8}"
        )
    for name, row in summary.items():
        for reason in row["reasons"]:
            click.echo(f"  {name}: {reason}")
    total = sum(accepted.values())
    verdict = "matches" if matches else "DOES NOT match"
    click.echo(f"emulator receipts: {total} records accepted; the summary {verdict} them")
