"""Outages while the daemon sends: the service gone, failing in every way, refusing our IP,
and parents that come hours later (a simulated clock). Nothing is rejected by an outage,
everything is delivered after recovery, backoff stays within backoff_max, and the watchdog
keeps being fed. HZSYNCD_SOAK=1 makes the outage 30 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import drop, ndjson, write_config
from daemon_helpers import DaemonProcess, NotifySocket, wait_for

from hzsyncd.config import load_config
from hzsyncd.daemon import Daemon
from hzsyncd.emulator import Emulator
from hzsyncd.notify import Notifier

SOAK = os.environ.get("HZSYNCD_SOAK") == "1"
OUTAGE_SECONDS = 30.0 if SOAK else 4.0
MAX_IN_FLIGHT = 8
BACKOFF_MAX = 2.0
# WatchdogSec=3: the daemon pings every 1.5 s and systemd kills it after 3 s without one. A call
# blocks the main loop for up to [service] timeout (1 s here), as WatchdogSec=60 and timeout=30
# do in production (contrib/hzsyncd.service, hzsyncd.toml).
WATCHDOG_USEC = 3_000_000

FAST = {
    "service": {"timeout": 1, "max_in_flight": MAX_IN_FLIGHT},
    "spool": {"settle_seconds": 0.2, "rescan_seconds": 1, "incomplete_seconds": 60},
    "retry": {
        "backoff_initial": 0.25,
        "backoff_max": BACKOFF_MAX,
        "ip_retry_seconds": 0.5,
        "relation_retry_hours": 1,
    },
}


class Running:
    """A daemon process with its own notify socket, kept open to count watchdog pings."""

    def __init__(self, config: Path, tmp_path: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="hzo"))
        self.notify = NotifySocket(self.dir / "n.sock")
        self.daemon = DaemonProcess(
            config,
            tmp_path / "daemon.log",
            {"NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        )
        try:
            self.notify.wait("READY=1", 30)
        except AssertionError:
            self.close()
            raise

    def pings(self, seconds: float) -> list[float]:
        """Times of the WATCHDOG=1 pings received in the next `seconds` (time passes on purpose)."""
        start = time.monotonic()
        end = start + seconds
        while (left := end - time.monotonic()) > 0:
            self.notify.read(min(0.05, left))
        assert self.daemon.proc.poll() is None, self.daemon.output()[-2000:]
        received = self.notify.received()
        return [t for t, m in received if m == "WATCHDOG=1" and start <= t <= end]

    def watch_for(self, seconds: float) -> int:
        """Let `seconds` pass and check systemd's watchdog would have been satisfied throughout:
        never WATCHDOG_USEC without a ping (the daemon pings at most every half of it, and
        only between loop iterations, so counts alone say less than the gaps)."""
        start = time.monotonic()
        times = self.pings(seconds)
        limit = WATCHDOG_USEC / 1e6
        marks = [start] + times + [time.monotonic()]
        gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        # A little slack on systemd's limit for the reader thread's wake-up.
        assert max(gaps) <= limit + 0.1, f"watchdog starved: gaps {[round(g, 2) for g in gaps]}"
        return len(times)

    def close(self) -> None:
        self.daemon.kill()
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.close()


def org_records(n: int, prefix: str = "E") -> list[dict[str, Any]]:
    return [{"org_id": f"{prefix}{i:05d}", "org_name": "企业", "amount": 30.10} for i in range(n)]


def accepted(receipts: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        json.loads(r["json"])["org_id"]
        for r in receipts
        if "json" in r and r.get("fault") is None and r["response"] == ""
    )


def done_names(spool: Path, table: str = "org_info") -> list[str]:
    return sorted(p.name for p in (spool / table / "done").glob("*/*"))


def ledger_outcomes(tmp_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{tmp_path / 'var' / 'ledger.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT outcome, count(*) FROM records GROUP BY outcome").fetchall()
        return {str(o): int(n) for o, n in rows}
    finally:
        conn.close()


def here_stacks() -> str:
    """This process's threads (the emulator's and an in-thread daemon's), for a stuck test."""
    frames = sys._current_frames().values()
    return "\n".join("".join(traceback.format_stack(f)) for f in frames)


def backoffs(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"retrying in ([0-9.]+) s", log)]


def check_outage_recovered(
    tmp_path: Path,
    spool: Path,
    run: Running,
    keys: list[str],
    receipts: Callable[[], list[dict[str, Any]]],
) -> None:
    """Shared end of an outage: all done, nothing rejected, backoff bounded."""
    wait_for(lambda: done_names(spool) == ["big.ndjson"], 60, "big.ndjson in done/", every=0.2)
    got = accepted(receipts())
    assert sorted(got) == keys, "records not delivered after recovery"
    # Only a call in flight when the service went away may have been done and then resent.
    duplicates = sum(c - 1 for c in got.values())
    assert duplicates <= MAX_IN_FLIGHT, f"{duplicates} records delivered twice"
    assert list((spool / "org_info" / "failed").glob("*")) == []
    assert ledger_outcomes(tmp_path) == {"ok": len(keys)}
    log = run.daemon.output()
    delays = backoffs(log)
    assert delays, f"no 'retrying in N s' line:\n{log[-2000:]}"
    assert max(delays) <= BACKOFF_MAX, delays
    assert "rejected" not in log.replace("nothing is marked failed", "")


def start_big_file(
    tmp_path: Path, emu: Emulator, running: list[Running], n: int
) -> tuple[Path, Running, list[str]]:
    config = write_config(tmp_path, emu.wsdl_url, **FAST)
    spool = tmp_path / "spool"
    run = Running(config, tmp_path)
    running.append(run)
    records = org_records(n)
    tmp = drop(spool, "org_info", "big.tmp", ndjson(records))
    tmp.rename(tmp.with_name("big.ndjson"))
    # Under way: a good part of the file is sent, not all of it.
    wait_for(lambda: len(accepted(emu.receipts())) >= n // 10, 30, "sending under way")
    assert len(accepted(emu.receipts())) < n, "the file went through before the outage"
    return spool, run, [r["org_id"] for r in records]


# The service stopped, then started again on the same port -----------------------------------


def test_service_down_for_a_while_then_back_on_the_same_port(
    tmp_path: Path, running: list[Running]
) -> None:
    first = Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "r1.ndjson", latency_ms=2)
    first.start()
    try:
        spool, run, keys = start_big_file(tmp_path, first, running, 4000)
    finally:
        first.stop()
    port = first.port
    pings = run.watch_for(OUTAGE_SECONDS)
    assert pings >= int(OUTAGE_SECONDS / (WATCHDOG_USEC / 1e6)), f"too few pings: {pings}"
    assert done_names(spool) == []
    log = run.daemon.output()
    assert "service unreachable" in log
    # The daemon starts over from a WSDL it cached; the service comes back where it was.
    second = Emulator(port=port, allow=["127.0.0.1"], receipts=tmp_path / "r2.ndjson", latency_ms=2)
    second.start()
    try:
        assert second.url == first.url
        check_outage_recovered(
            tmp_path, spool, run, keys, lambda: first.receipts() + second.receipts()
        )
        assert len(accepted(second.receipts())) > 0
    finally:
        second.stop()
    delays = backoffs(run.daemon.output())
    # The outage was long enough to reach the cap: backoff grew, then held at backoff_max.
    assert delays[-1] == BACKOFF_MAX or OUTAGE_SECONDS < 3, delays
    assert "sending resumed" in run.daemon.output()


def test_daemon_restarted_while_the_service_is_down_starts_from_its_cached_wsdl(
    tmp_path: Path, running: list[Running]
) -> None:
    first = Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "r1.ndjson", latency_ms=2)
    first.start()
    try:
        spool, run, keys = start_big_file(tmp_path, first, running, 3000)
    finally:
        first.stop()
    run.watch_for(1.5)
    assert run.daemon.stop(timeout=15) == 0, run.daemon.output()[-2000:]
    # No service, no WSDL to fetch: READY=1 all the same, from the copy beside the ledger.
    again = Running(tmp_path / "hzsyncd.toml", tmp_path)
    running.append(again)
    pings = again.watch_for(OUTAGE_SECONDS)
    assert pings >= int(OUTAGE_SECONDS / (WATCHDOG_USEC / 1e6)), f"too few pings: {pings}"
    assert "using the saved copy" in again.daemon.output()
    assert done_names(spool) == []
    second = Emulator(port=first.port, allow=["127.0.0.1"], receipts=tmp_path / "r2.ndjson")
    second.start()
    try:
        check_outage_recovered(
            tmp_path, spool, again, keys, lambda: first.receipts() + second.receipts()
        )
    finally:
        second.stop()


# Injected failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["http500", "http503", "reset", "stall", "garbage", "fault"])
def test_injected_failure_pauses_and_everything_is_delivered_after(
    tmp_path: Path, running: list[Running], mode: str
) -> None:
    outage = OUTAGE_SECONDS
    with Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "r.ndjson", latency_ms=2) as emu:
        spool, run, keys = start_big_file(tmp_path, emu, running, 2000)
        emu.set_fault(mode)
        start = time.time()
        pings = run.watch_for(outage)
        emu.set_fault(None)
        assert pings >= int(outage / (WATCHDOG_USEC / 1e6)), f"too few pings: {pings}"
        faults = [r for r in emu.receipts() if r.get("fault") == mode]
        assert faults, f"no call met the {mode} fault"
        # Retries during the outage: never further apart than backoff_max plus a call's timeout.
        times = [start] + [r["time"] for r in faults]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps) <= BACKOFF_MAX + 1 + 1.0, gaps
        check_outage_recovered(tmp_path, spool, run, keys, emu.receipts)
        # An injected failure comes before the service: no call was done and then failed.
        assert max(accepted(emu.receipts()).values()) == 1


# The IP refused in the middle of a run ---------------------------------------------------------


def test_ip_removed_mid_run_pauses_loudly_once_and_resumes_without_losses(
    tmp_path: Path, running: list[Running]
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "r.ndjson", latency_ms=2) as emu:
        spool, run, keys = start_big_file(tmp_path, emu, running, 6000)
        pauses = 2
        for number in range(pauses):
            assert emu.service.del_ip("demo", "demo", "127.0.0.1") == 1
            wait_for(
                lambda n=number: run.daemon.output().count("not on the allow-list") == n + 1,
                10,
                "the pause's log line",
            )
            pings = run.watch_for(WATCHDOG_USEC / 1e6)
            assert pings >= 1, f"watchdog starved while paused: {pings}"
            assert emu.service.add_ip("demo", "demo", "127.0.0.1") == 1
            # Sending resumes by itself (seen at the service: the daemon logs its "resumed"
            # line only when the file is finished).
            sent = len(accepted(emu.receipts()))
            wait_for(
                lambda n=sent: len(accepted(emu.receipts())) >= min(n + 200, len(keys)),
                10,
                "sending resumed",
            )
            assert not done_names(spool), "the file finished before the last pause"
        try:
            wait_for(lambda: done_names(spool) == ["big.ndjson"], 180, "big.ndjson in done/")
        except AssertionError as exc:
            log, count = run.daemon.output()[-3000:], len(emu.receipts())
            stacks = [run.daemon.stacks(), here_stacks()]
            time.sleep(2)  # a second look: is it moving?
            stacks.append(run.daemon.stacks())
            raise AssertionError(
                f"{exc}; receipts {count} then {len(emu.receipts())}; log:\n{log}\n"
                + "\n=====\n".join(stacks)
            ) from None
        got = accepted(emu.receipts())
        assert sorted(got) == keys
        duplicates = sum(c - 1 for c in got.values())
        assert duplicates <= MAX_IN_FLIGHT, duplicates
        assert ledger_outcomes(tmp_path) == {"ok": len(keys)}
        assert list((spool / "org_info" / "failed").glob("*")) == []
        log = run.daemon.output()
        denied = [r for r in emu.receipts() if r.get("response") == "当前报送IP地址非法"]
        assert denied, "no call was refused"
        # One loud line per pause, however many calls were refused and re-probes made.
        loud = [line for line in log.splitlines() if "not on the allow-list" in line]
        assert len(loud) == pauses, loud
        assert "sending resumed" in log
        assert all(line.startswith("err") for line in loud), loud


# Relation errors over hours of a simulated clock ----------------------------------------------


class FakeClock:
    """Wall time plus an offset the test advances: backoff still runs, hours pass at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def test_relation_deferred_for_hours_simulated_clock(tmp_path: Path) -> None:
    with Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "r.ndjson") as emu:
        config_path = write_config(
            tmp_path,
            emu.wsdl_url,
            **{**FAST, "retry": {**FAST["retry"], "relation_retry_hours": 2, "backoff_max": 1}},
        )
        config = load_config(config_path)
        clock = FakeClock()
        daemon = Daemon(config, config_path, clock=clock, notifier=Notifier(environ={}))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                daemon.run()
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        spool = tmp_path / "spool"
        drop(
            spool,
            "service_org_info",
            "orgs.ndjson",
            ndjson([{"org_id": "OX", "org_property": "3"}]),
        )
        thread = threading.Thread(target=run, name="daemon", daemon=True)
        thread.start()
        try:
            wait_for(lambda: done_names(spool, "service_org_info"), 20, "the parent org done")
            drop(spool, "org_in_flat", "later.ndjson", ndjson([{"flat_id": "FL", "org_id": "OX"}]))
            drop(spool, "org_in_flat", "never.ndjson", ndjson([{"flat_id": "FN", "org_id": "OX"}]))

            def relation_replies(flat: str) -> int:
                return sum(
                    1
                    for r in emu.receipts()
                    if r.get("json")
                    and json.loads(r["json"]).get("flat_id") == flat
                    and str(r["response"]).startswith("error-2001")
                )

            wait_for(lambda: relation_replies("FL") and relation_replies("FN"), 20, "both deferred")
            assert not errors, errors
            clock.advance(3600)  # an hour later the parent of one comes
            drop(spool, "flat_info", "flat.ndjson", ndjson([{"flat_id": "FL", "flat_type": "1"}]))
            wait_for(lambda: done_names(spool, "org_in_flat") == ["later.ndjson"], 20, "later done")
            assert list((spool / "org_in_flat" / "failed").glob("*")) == []
            # Still within relation_retry_hours: the orphan keeps waiting, not rejected.
            before = relation_replies("FN")
            wait_for(lambda: relation_replies("FN") > before, 10, "the orphan retried")
            assert list((spool / "org_in_flat" / "failed").glob("*")) == []
            clock.advance(3600 + 60)  # past 2 h since its first relation error
            failed = spool / "org_in_flat" / "failed"
            try:
                wait_for(
                    lambda: (failed / "never.ndjson.errors.ndjson").exists(), 20, "never failed"
                )
            except AssertionError as exc:
                stacks = here_stacks()
                raise AssertionError(
                    f"{exc}; errors {errors}; waiting {daemon.waiting}; receipts "
                    f"{emu.receipts()[-4:]}\n{stacks}"
                ) from None
            text = (failed / "never.ndjson.errors.ndjson").read_text("utf-8")
            report = [json.loads(line) for line in text.splitlines()]
            assert len(report) == 1 and report[0]["outcome"] == "rejected", report
            assert "error-2001" in json.dumps(report[0], ensure_ascii=False), report
            assert report[0]["code"] == "2001", report
            assert (failed / "never.ndjson").exists()
            assert not errors, errors
        finally:
            daemon.stop()
            thread.join(timeout=15)
        assert not thread.is_alive(), "Daemon.run did not return after stop()"
        assert not errors, errors
