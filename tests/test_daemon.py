"""`hzsyncd run` as a real process: real inotify, a real notify socket, the emulator over HTTP."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Invoke, data_calls, drop, ndjson, write_config
from daemon_helpers import DaemonProcess, NotifySocket, child_env, wait_for
from journal import running_journald, unavailable

from hzsyncd.emulator import Emulator
from hzsyncd.tables import TABLES

FAST = {
    "spool": {"settle_seconds": 0.3, "rescan_seconds": 1, "incomplete_seconds": 60},
    "retry": {
        "backoff_initial": 0.2,
        "backoff_max": 1,
        "ip_retry_seconds": 0.5,
        "relation_retry_hours": 1,
    },
}


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "receipts.ndjson") as e:
        yield e


@pytest.fixture
def config(tmp_path: Path, emu: Emulator) -> Path:
    return write_config(tmp_path, emu.wsdl_url, **FAST)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(daemons: list[DaemonProcess], config: Path, tmp_path: Path, **env: str) -> DaemonProcess:
    """Start `hzsyncd run` and return once it has sent READY=1, as systemd would wait."""
    own = "NOTIFY_SOCKET" not in env
    notify = NotifySocket(Path(tempfile.mkdtemp(prefix="hz")) / "n.sock") if own else None
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify.path)
    daemon = DaemonProcess(config, tmp_path / f"daemon{len(daemons)}.log", env)
    daemons.append(daemon)
    if notify is not None:
        try:
            notify.wait("READY=1", 20)
        finally:
            notify.close()
            shutil.rmtree(notify.path.parent)
    return daemon


def done_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.glob("*/done/*/*")) + sorted(spool.glob("*/delete/done/*/*"))


def failed_files(spool: Path) -> list[Path]:
    return sorted(spool.glob("*/failed/*")) + sorted(spool.glob("*/delete/failed/*"))


def keys_sent(emu: Emulator, field: str = "org_id") -> list[str]:
    return sorted(json.loads(c["json"])[field] for c in data_calls(emu) if c["response"] == "")


def test_slow_writer_and_renamed_file_are_each_sent_once_and_not_early(
    tmp_path: Path, emu: Emulator, config: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    early = drop(spool, "org_info", "early.ndjson", ndjson([{"org_id": "E0"}]))
    start(daemons, config, tmp_path)
    wait_for(lambda: keys_sent(emu) == ["E0"], 10, "the file dropped before start")
    assert not early.exists()

    slow = spool / "org_info" / "slow.ndjson"
    with slow.open("w", encoding="utf-8") as handle:
        handle.write(ndjson([{"org_id": "S1"}]))
        handle.flush()
        # Longer than settle and rescan: an open file must still not be taken.
        time.sleep(2.5)
        assert keys_sent(emu) == ["E0"], "taken before the writer closed it"
        handle.write(ndjson([{"org_id": "S2"}]))
    tmp = spool / "org_info" / "renamed.tmp"
    tmp.write_text(ndjson([{"org_id": "R1"}]), encoding="utf-8")
    tmp.rename(spool / "org_info" / "renamed.ndjson")

    wait_for(lambda: len(done_files(spool)) == 3, 10, "three files in done/")
    assert keys_sent(emu) == ["E0", "R1", "S1", "S2"]
    assert len(data_calls(emu)) == 4


RECORDS = {
    "flat_info": ("flat_id", {"flat_name": "平台", "flat_type": "1"}),
    "service_org_info": ("org_id", {"org_name": "机构", "org_property": "3"}),
    "org_info": ("org_id", {"org_name": "企业"}),
    "org_in_flat": (None, {}),
    "service_item": ("item_id", {"org_id": "O-main"}),
    "service_activity": ("activity_id", {"item_id": "I-main"}),
    "service_credit": ("credit_id", {"activity_id": "A-main"}),
}
MAIN = {
    "flat_info": "F-main",
    "service_org_info": "O-main",
    "org_info": "E-main",
    "service_item": "I-main",
    "service_activity": "A-main",
    "service_credit": "C-main",
}


def table_files(name: str) -> tuple[str, str]:
    """A report file (the main record and an extra one) and a delete file of the extra one."""
    if name == "org_in_flat":
        report = [{"flat_id": "F-main", "org_id": "O-main"}, {"flat_id": "F-x", "org_id": "O-x"}]
        gone = [{"flat_id": "F-x", "org_id": "O-x"}]
    else:
        key, fields = RECORDS[name]
        assert key is not None
        report = [{key: MAIN[name], **fields}, {key: f"{name}-extra", **fields}]
        gone = [{key: f"{name}-extra"}]
    return ndjson(report), ndjson(gone)


def test_children_dropped_before_parents_all_end_in_done(
    tmp_path: Path, emu: Emulator, config: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    start(daemons, config, tmp_path)
    # org_in_flat's extra row names parents that exist only for this test.
    extra_parents = {"flat_info": {"flat_id": "F-x"}, "service_org_info": {"org_id": "O-x"}}
    children = [n for n, t in TABLES.items() if t.rank > 0]
    for name in reversed(children):
        report, gone = table_files(name)
        drop(spool, name, f"{name}.ndjson", report)
        drop(spool, name, f"{name}-gone.ndjson", gone, delete=True)
    wait_for(
        lambda: any(c["response"].startswith("error-") for c in data_calls(emu)),
        10,
        "a child refused for its missing parent",
    )
    for name in (n for n, t in TABLES.items() if t.rank == 0):
        report, gone = table_files(name)
        if name in extra_parents:
            report += ndjson([extra_parents[name]])
        drop(spool, name, f"{name}.ndjson", report)
        drop(spool, name, f"{name}-gone.ndjson", gone, delete=True)

    try:
        wait_for(lambda: len(done_files(spool)) == 14, 30, "all 14 files in done/")
    except AssertionError as exc:
        left = sorted(str(p.relative_to(spool)) for p in spool.rglob("*.ndjson"))
        raise AssertionError(f"{exc}\nspool: {left}\nlog:\n{daemons[0].output()[-6000:]}") from None
    assert failed_files(spool) == []
    deletes = [c for c in data_calls(emu) if c["method"].startswith("delete")]
    assert len({c["method"] for c in deletes if c["response"] == ""}) == 7


def test_notify_socket_sees_ready_status_watchdog_and_stopping(
    tmp_path: Path, config: Path, daemons: list[DaemonProcess]
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = start(
            daemons, config, tmp_path, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000"
        )
        notify.wait("READY=1", 10)
        assert any(m.startswith("STATUS=") for m in notify.read())
        time.sleep(1.5)  # the watchdog must keep coming while the daemon idles
        assert sum(m == "WATCHDOG=1" for m in notify.read()) >= 2
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 10
        notify.wait("STOPPING=1", 2)
    finally:
        notify.close()


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_for_a_bad_one(
    tmp_path: Path, emu: Emulator, config: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    notify = NotifySocket(Path(tempfile.mkdtemp(prefix="hz")) / "n.sock")
    try:
        daemon = start(daemons, config, tmp_path, NOTIFY_SOCKET=str(notify.path))
        notify.wait("READY=1", 20)
        good = config.read_text("utf-8")
        config.write_text(good.replace("[spool]", "[spool]\nsettle_secnds = 1"), "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("reload refused", 10)
        assert "settle_secnds: unknown key" in daemon.output()
        drop(spool, "org_info", "a.ndjson", ndjson([{"org_id": "E1"}]))
        wait_for(lambda: len(done_files(spool)) == 1, 10, "a file sent with the old config")

        config.write_text(good.replace('level = "info"', 'level = "debug"'), "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded", 10)
        notify.wait("RELOADING=1", 5)
        drop(spool, "org_info", "b.ndjson", ndjson([{"org_id": "E2"}]))
        daemon.wait_log("key=E2: accepted", 10)  # debug lines: the new level is in force
        assert daemon.proc.poll() is None
    finally:
        notify.close()


def test_symlink_with_a_data_name_is_refused_into_failed(
    tmp_path: Path, emu: Emulator, config: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    start(daemons, config, tmp_path)
    target = tmp_path / "elsewhere.ndjson"
    target.write_text(ndjson([{"org_id": "E1"}]), "utf-8")
    (spool / "org_info" / "link.ndjson").symlink_to(target)

    wait_for(
        lambda: (spool / "org_info" / "failed" / "link.ndjson.errors.ndjson").exists(),
        10,
        "the symlink refused into failed/",
    )
    assert (spool / "org_info" / "failed" / "link.ndjson").is_symlink()
    assert data_calls(emu) == [] and target.exists()


def test_ip_refused_pauses_without_failing_and_resumes_after_ip_add(
    tmp_path: Path, spool: Path, daemons: list[DaemonProcess], hzsyncd: Invoke
) -> None:
    with Emulator(port=0, receipts=tmp_path / "r.ndjson") as emu:
        config = write_config(tmp_path, emu.wsdl_url, **FAST)
        daemon = start(daemons, config, tmp_path)
        drop(spool, "org_info", "a.ndjson", ndjson([{"org_id": "E1"}, {"org_id": "E2"}]))
        daemon.wait_log("not on the allow-list", 10)
        time.sleep(1.5)  # several re-probes
        assert failed_files(spool) == [] and done_files(spool) == []
        assert daemon.output().count("not on the allow-list") == 1, "the pause is logged once"

        assert hzsyncd("ip", "add", "-c", config, "127.0.0.1").exit_code == 0

        wait_for(lambda: len(done_files(spool)) == 1, 10, "the file in done/ after ip add")
        daemon.wait_log("allowed again", 5)
        assert keys_sent(emu) == ["E1", "E2"]


SECRET = "S3cret-Pw-7f1c9a"


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_journal_holds_rejected_records_with_fields_and_never_the_password(
    tmp_path: Path, emu: Emulator, spool: Path, daemons: list[DaemonProcess]
) -> None:
    config = write_config(
        tmp_path,
        emu.wsdl_url,
        **FAST,
        account={"user_id": "demo", "password": SECRET},
        log={"target": "journal", "level": "debug"},
    )
    records = [
        {"org_id": "O1", "org_property": "3"},
        {"org_id": "O2", "org_property": "7"},
        {"org_property": "3"},
    ]
    with running_journald() as journal:
        start(daemons, config, tmp_path, HZSYNCD_JOURNAL_SOCKET=journal.socket_path)
        drop(spool, "service_org_info", "mixed.ndjson", ndjson(records))
        rejected = journal.read(2, timeout=15, HZSYNCD_OUTCOME="rejected")
        by_key = {e.get("HZSYNCD_KEY"): e for e in rejected}
        assert set(by_key) >= {"O2", None}
        server = by_key["O2"]
        assert server["HZSYNCD_TABLE"] == "service_org_info"
        assert server["HZSYNCD_FILE"] == "mixed.ndjson"
        assert "org_property取值范围应为[1, 2, 3, 5, 9, ]" in server["MESSAGE"]
        assert "org_id" in by_key[None]["MESSAGE"] and "line 3" in by_key[None]["MESSAGE"]
        wait_for(lambda: failed_files(spool), 10, "the file in failed/")
        daemons[-1].stop()
        everything = journal.read(1)
        assert everything and all(SECRET not in json.dumps(e) for e in everything)
    assert SECRET not in daemons[-1].output()


def test_second_daemon_on_the_same_spool_exits_2_naming_the_first(
    tmp_path: Path, config: Path, daemons: list[DaemonProcess]
) -> None:
    first = start(daemons, config, tmp_path)
    second = subprocess.run(
        [sys.executable, "-m", "hzsyncd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
        env=child_env(),
    )
    assert second.returncode == 2
    assert f"pid {first.proc.pid}" in second.stderr
    path = drop(tmp_path / "outside", "org_info", "x.ndjson", ndjson([{"org_id": "E1"}]))
    send = subprocess.run(
        [
            sys.executable,
            "-m",
            "hzsyncd",
            "send",
            "-c",
            str(config),
            "--table",
            "org_info",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=child_env(),
    )
    assert send.returncode == 2 and f"pid {first.proc.pid}" in send.stderr


def test_sigterm_mid_file_then_restart_delivers_everything_once_more_at_most(
    tmp_path: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"], latency_ms=20) as emu:
        config = write_config(tmp_path, emu.wsdl_url, **FAST)
        records = [{"org_id": f"E{i:04}"} for i in range(400)]
        drop(spool, "org_info", "big.ndjson", ndjson(records))
        daemon = start(daemons, config, tmp_path)
        wait_for(lambda: len(data_calls(emu)) >= 60, 20, "some calls made")
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 10
        assert done_files(spool) == []

        start(daemons, config, tmp_path)
        wait_for(lambda: len(done_files(spool)) == 1, 30, "the file in done/")
        sent = keys_sent(emu)
        assert sorted(set(sent)) == [r["org_id"] for r in records], "a record was lost"
        assert len(sent) - len(set(sent)) <= 4, "more repeats than calls in flight"
        assert len(list(spool.rglob("big*.ndjson"))) == 1


def test_sigterm_during_a_stalled_call_on_the_main_thread_exits_0_within_10_s(
    tmp_path: Path, spool: Path, daemons: list[DaemonProcess]
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"]) as emu:
        config = write_config(
            tmp_path, emu.wsdl_url, **FAST, service={"max_in_flight": 1, "timeout": 60}
        )
        daemon = start(daemons, config, tmp_path)
        emu.set_fault("stall")  # answers nothing for 60 s: longer than a stop may take
        drop(spool, "org_info", "a.ndjson", ndjson([{"org_id": "E1"}]))
        time.sleep(1.5)  # the call is out: the file is taken at once (settle 0.3 s)
        started = time.monotonic()
        assert daemon.stop(timeout=15) == 0
        assert time.monotonic() - started < 10
        emu.set_fault(None)
        start(daemons, config, tmp_path)
        wait_for(lambda: len(done_files(spool)) == 1, 15, "the file sent after the restart")
        assert keys_sent(emu) == ["E1"]


def test_demo_runs_end_to_end_and_matches_the_receipts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hzsyncd", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["matches_receipts"] is True
    assert sum(t["ok"] for t in summary["tables"].values()) == 56
