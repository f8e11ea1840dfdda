"""`hzsyncd demo`: the emulator, the daemon and the examples, end to end, then a summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from hzsyncd.emulator import Emulator
from hzsyncd.errors import HzsyncdError
from hzsyncd.ledger import Ledger, Reports
from hzsyncd.spool import Spool, name_kind
from hzsyncd.tables import DATA_METHODS, TABLES

# Short timings, so that every behaviour shows within seconds: the relation error that never
# clears is rejected after relation_retry_hours (0.002 h = 7 s) instead of a day.
DEMO_CONFIG = """\
[service]
wsdl = "{wsdl}"
[account]
user_id = "demo"
password = "demo"
[spool]
root = "spool"
settle_seconds = 0.2
rescan_seconds = 2
[ledger]
path = "ledger.db"
[retry]
backoff_initial = 0.5
backoff_max = 2
relation_retry_hours = 0.002
ip_retry_seconds = 1
[log]
target = "stderr"
level = "{level}"
"""
WAIT_SECONDS = 90


class DemoFailed(HzsyncdError):
    """The demo did not reach its end."""


def examples_dir() -> Path:
    """The examples beside the package (a checkout) or inside it (an installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples", here / "examples"):
        if candidate.is_dir():
            return candidate
    raise DemoFailed("the examples folder was not found beside or inside the hzsyncd package")


def drop_examples(source: Path, root: Path) -> list[Path]:
    """Copy the examples into the spool, report files before delete files, in a fixed order.

    Each is written under a temporary name and renamed, as exporters should do.
    """
    files = sorted(
        (p for p in source.rglob("*") if p.is_file() and name_kind(p.name) == "accept"),
        key=lambda p: (p.parent.name == "delete", str(p.relative_to(source))),
    )
    stamp = time.time_ns() - 10**12
    dropped = []
    for number, path in enumerate(files):
        target = root / path.relative_to(source)
        temporary = target.with_name(target.name + ".tmp")
        shutil.copyfile(path, temporary)
        # Distinct mtimes keep the order the examples were written for (report, then delete).
        os.utime(temporary, ns=(stamp + number * 10**6, stamp + number * 10**6))
        temporary.rename(target)
        dropped.append(target)
    return dropped


def disposed(path: Path) -> bool:
    drop = path.parent
    return not path.exists() and (
        any((drop / "failed").glob(path.name)) or any((drop / "done").glob(f"*/{path.name}"))
    )


def wait_until(condition: Any, what: str, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if daemon.poll() is not None:
            raise DemoFailed(f"the daemon exited with {daemon.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {WAIT_SECONDS} s waiting for {what}")
        time.sleep(0.1)


def start_daemon(workdir: Path, config: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """`hzsyncd run` as systemd would start it: Type=notify, so READY=1 says it is serving.

    The notify socket stays open while the daemon runs, as systemd's does: the daemon keeps
    sending STATUS= and WATCHDOG=1 to it.
    """
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(WAIT_SECONDS)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    env.pop("JOURNAL_STREAM", None)
    daemon = subprocess.Popen([sys.executable, "-m", "hzsyncd", "run", "-c", str(config)], env=env)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
    except TimeoutError:
        daemon.kill()
        notify.close()
        raise DemoFailed("the daemon did not report READY=1") from None
    # Read on, as systemd does: a full socket queue would block the daemon's next message.
    threading.Thread(target=_drain, args=(notify,), daemon=True).start()
    return daemon, notify


def _drain(notify: socket.socket) -> None:
    notify.settimeout(None)
    try:
        while notify.recv(4096):
            pass
    except OSError:
        pass  # closed at the end of the demo


def run_demo(style: str = "rpc", keep: bool = False, as_json: bool = False) -> int:
    def say(text: str) -> None:
        if not as_json:
            click.echo(f"demo: {text}", err=True)

    workdir = Path(tempfile.mkdtemp(prefix="hzsyncd-demo-"))
    try:
        with Emulator(port=0, style=style, receipts=workdir / "receipts.ndjson") as emulator:
            config = workdir / "hzsyncd.toml"
            level = "warning" if as_json else "info"
            config.write_text(DEMO_CONFIG.format(wsdl=emulator.wsdl_url, level=level), "utf-8")
            say(f"emulator ({style}) at {emulator.wsdl_url}; allow-list empty, as on a new account")
            root = workdir / "spool"
            Spool(root, TABLES).init()
            daemon, notify = start_daemon(workdir, config)
            try:
                say(f"daemon ready; dropping the examples into {root}")
                files = drop_examples(examples_dir(), root)
                wait_until(
                    lambda: any(
                        r.get("response") == "当前报送IP地址非法" for r in emulator.receipts()
                    ),
                    "the IP refusal",
                    daemon,
                )
                say("the service refuses this host's IP; the daemon pauses. Now: ip add 127.0.0.1")
                added = subprocess.run(
                    [sys.executable, "-m", "hzsyncd", "ip", "add", "-c", str(config), "127.0.0.1"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                say(f"hzsyncd ip add 127.0.0.1 → {added.stdout.strip() or added.stderr.strip()}")
                wait_until(lambda: all(disposed(p) for p in files), "every file disposed", daemon)
                again = root / "org_info" / "01_enterprises-again.ndjson"
                say(f"every file is done or failed; dropping {again.name} again (same records)")
                shutil.copyfile(examples_dir() / "org_info" / "01_enterprises.ndjson", again)
                wait_until(lambda: disposed(again), "the copy disposed", daemon)
            finally:
                daemon.send_signal(signal.SIGTERM)
                code = daemon.wait(timeout=15)
                notify.close()
            say(f"daemon stopped (exit {code})")
            receipts = emulator.receipts()
        with Ledger.open(workdir / "ledger.db", create=False) as ledger:
            reports = Reports(ledger)
            summary, reasons = reports.table_summary(), reports.rejected()
        accepted = receipts_by_table(receipts)
        matches = all(summary.get(t, {}).get("ok", 0) == accepted[t] for t in TABLES)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "tables": {t: _row(summary.get(t, {})) for t in TABLES},
                        "rejected": [_reason(r) for r in reasons],
                        "receipts_ok": dict(accepted),
                        "matches_receipts": matches,
                    },
                    ensure_ascii=False,
                    indent=2,
                )
            )
        else:
            print_summary(summary, reasons, accepted, matches)
        return 0 if matches and code == 0 else 1
    finally:
        if keep:
            click.echo(f"demo: kept {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def receipts_by_table(receipts: list[dict[str, Any]]) -> Counter[str]:
    accepted: Counter[str] = Counter()
    for receipt in receipts:
        if receipt.get("method") in DATA_METHODS and receipt.get("response") == "":
            accepted[DATA_METHODS[receipt["method"]][0].name] += 1
    return accepted


def _row(counts: dict[str, int]) -> dict[str, int]:
    return {
        "files_done": counts.get("files_done", 0),
        "files_failed": counts.get("files_failed", 0),
        "ok": counts.get("ok", 0),
        "duplicate": counts.get("duplicate", 0),
        "rejected": counts.get("rejected", 0),
        "deferred": counts.get("ever_deferred", 0),
    }


def _reason(row: dict[str, Any]) -> str:
    messages = "; ".join(json.loads(row["messages"] or "[]"))
    return f"{row['table_name']} {row['file']}:{row['line']} key={row['key']}: {messages}"


def print_summary(
    summary: dict[str, dict[str, int]],
    reasons: list[dict[str, Any]],
    accepted: Counter[str],
    matches: bool,
) -> None:
    click.echo(
        f"{'table':18} {'done':>4} {'failed':>6} {'ok':>4} {'dup':>4} "
        f"{'rejected':>8} {'deferred':>8}"
    )
    for name in TABLES:
        row = _row(summary.get(name, {}))
        click.echo(
            f"{name:18} {row['files_done']:>4} {row['files_failed']:>6} {row['ok']:>4} "
            f"{row['duplicate']:>4} {row['rejected']:>8} {row['deferred']:>8}"
        )
    if reasons:
        click.echo("rejected, with the server's reasons:")
        for row in reasons:
            click.echo(f"  {_reason(row)}")
    click.echo(
        "deferred: records that met a relation error (error-NNNN) and were retried; one "
        "that never cleared was rejected after relation_retry_hours"
    )
    verdict = "matches" if matches else "DOES NOT match"
    click.echo(
        f"emulator receipts: {sum(accepted.values())} records accepted; the summary {verdict} them"
    )
