"""Faults of the environment under a real `hzsyncd run`: full or read-only file systems, a ledger
deleted or corrupted while the daemon was stopped.

For each: a clear error (log line or exit code with a one-line message), no data lost (files stay
in the drop folder, .work/ or where they belong; nothing good marked failed), and nothing sent
twice (emulator receipts). File systems are made real with tmpfs and read-only bind mounts, which
needs root (CI runs as root); without it the tests skip and say why.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import data_calls, ndjson, write_config
from daemon_helpers import DaemonProcess, child_env, start_ready, wait_for

from hzsyncd.emulator import Emulator

FAST = {
    "spool": {"settle_seconds": 0.3, "rescan_seconds": 1, "incomplete_seconds": 60},
    "retry": {"backoff_initial": 0.2, "backoff_max": 1, "ip_retry_seconds": 0.5},
}
TABLE = "org_info"


# Helpers ---------------------------------------------------------------------------------------


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs or a read-only bind mount")


Mount = Callable[..., None]


@pytest.fixture
def mount() -> Iterator[Mount]:
    """mount(*args, target=DIR): run mount(8), skip the test if it fails; unmounted after."""
    done: list[Path] = []

    def do(*args: str, target: Path) -> None:
        need_root()
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mount {' '.join(args)} failed: {result.stderr.strip()}")
        done.append(target)

    yield do
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def tmpfs(mount: Mount, path: Path, size: str = "1m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path), target=path)


def read_only(mount: Mount, path: Path) -> None:
    """Make `path` read-only for everyone, root included: a read-only bind mount over itself."""
    path.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(path), str(path), target=path)
    mount("-o", "remount,ro,bind", str(path), target=path)
    probe = path / ".probe"
    try:
        probe.touch()
    except OSError as exc:
        assert exc.errno == errno.EROFS
    else:
        probe.unlink()
        pytest.skip("the read-only bind mount is writable here")


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; the filler file is returned."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as out:
        block = b"\0" * 65536
        while True:
            try:
                out.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:  # the last partial block
            try:
                out.write(b"\0" * 512)
            except OSError:
                break
    return filler


def run_once(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`hzsyncd run` expected to refuse to start: its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "hzsyncd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def put(folder: Path, name: str, text: str) -> Path:
    """Drop a file as writers should: a .tmp then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".tmp")
    tmp.write_text(text, "utf-8")
    return tmp.rename(folder / name)


def keys(emu: Emulator, prefix: str = "") -> list[str]:
    found = [str(json.loads(c["json"]).get("org_id")) for c in data_calls(emu)]
    return sorted(k for k in found if k.startswith(prefix))


def accepted(emu: Emulator, prefix: str = "") -> list[str]:
    found = [
        str(json.loads(c["json"]).get("org_id")) for c in data_calls(emu) if c["response"] == ""
    ]
    return sorted(k for k in found if k.startswith(prefix))


def in_done(drop: Path, name: str) -> list[Path]:
    return list(drop.glob(f"done/*/{name}"))


def one_line_error(text: str) -> bool:
    """An expected error: `hzsyncd: ...` and no traceback."""
    return "hzsyncd: " in text and "Traceback" not in text


def ledger_rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(port=0, allow=["127.0.0.1"], receipts=tmp_path / "receipts.ndjson") as e:
        yield e


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


def records(prefix: str, n: int) -> str:
    return ndjson([{"org_id": f"{prefix}{i:03}"} for i in range(n)])


def finish_or_exit(daemon: DaemonProcess, predicate: Callable[[], Any], timeout: float) -> None:
    """Wait until `predicate` holds or the daemon has exited."""
    wait_for(lambda: predicate() or daemon.proc.poll() is not None, timeout, "the fault to show")
    try:  # an error printed on the way out: let the process finish exiting
        daemon.proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass


# The spool ---------------------------------------------------------------------------------


def test_spool_on_a_full_file_system(
    tmp_path: Path, emu: Emulator, mount: Mount, daemons: list[DaemonProcess]
) -> None:
    """Files taken (renames need no space) but no room for the errors report of a failed file."""
    spool = tmp_path / "spool"
    tmpfs(mount, spool)
    drop = spool / TABLE
    put(drop, "good.ndjson", records("FULL-G", 3))
    put(drop, "mixed.ndjson", records("FULL-M", 2) + '{"org_id": "FULL-X", \n')
    reserve = spool / "reserve.bin"
    reserve.write_bytes(b"\0" * 4096)  # one page: room for the daemon's lock file, no more
    filler = fill(spool)
    reserve.unlink()
    config = write_config(tmp_path, emu.wsdl_url, **FAST)

    daemon = start_ready(config, tmp_path / "d0.log")
    daemons.append(daemon)
    wait_for(lambda: in_done(drop, "good.ndjson"), 15, "the good file in done/")
    finish_or_exit(daemon, lambda: "No space left on device" in daemon.output(), 15)
    log = daemon.output()
    assert "No space left on device" in log and "mixed.ndjson" in log, log[-2000:]
    if daemon.proc.poll() is not None:
        assert daemon.proc.returncode == 2 and one_line_error(log), log[-2000:]
    # No data lost: the failed file is somewhere in its drop folder, nothing good in failed/.
    assert list(drop.rglob("mixed.ndjson")), "mixed.ndjson is gone"
    assert not (drop / "failed" / "good.ndjson").exists()
    assert accepted(emu, "FULL-") == [
        "FULL-G000",
        "FULL-G001",
        "FULL-G002",
        "FULL-M000",
        "FULL-M001",
    ]

    # Room again: the failed file gets its report, and nothing is sent a second time.
    filler.unlink()
    if daemon.proc.poll() is not None:
        daemons.append(start_ready(config, tmp_path / "d1.log"))
    report = drop / "failed" / "mixed.ndjson.errors.ndjson"
    wait_for(report.exists, 15, "the errors report once there is room")
    [error] = [json.loads(line) for line in report.read_text("utf-8").splitlines()]
    assert error["line"] == 3
    assert keys(emu, "FULL-") == accepted(emu, "FULL-"), "a record sent twice"


def test_done_folder_not_writable(
    tmp_path: Path, emu: Emulator, mount: Mount, daemons: list[DaemonProcess]
) -> None:
    """done/ on a read-only mount (as root, chmod 0555 stops nothing; a ro bind mount does)."""
    drop = tmp_path / "spool" / TABLE
    read_only(mount, drop / "done")
    config = write_config(tmp_path, emu.wsdl_url, **FAST)
    daemon = start_ready(config, tmp_path / "d0.log")
    daemons.append(daemon)
    put(drop, "good.ndjson", records("RO-", 3))

    finish_or_exit(daemon, lambda: "Read-only file system" in daemon.output(), 15)
    log = daemon.output()
    assert "Read-only file system" in log and "good.ndjson" in log, log[-2000:]
    if daemon.proc.poll() is not None:
        assert daemon.proc.returncode == 2 and one_line_error(log), log[-2000:]
    # Kept, not failed: every record of it was accepted.
    assert list(drop.glob("failed/*")) == [], "a good file marked failed"
    assert (drop / ".work" / "good.ndjson").exists() or (drop / "good.ndjson").exists()
    assert keys(emu, "RO-") == ["RO-000", "RO-001", "RO-002"]

    # Writable again: the file reaches done/ without a single call more.
    subprocess.run(["umount", "-l", str(drop / "done")], check=True)
    subprocess.run(["umount", "-l", str(drop / "done")], capture_output=True)
    if daemon.proc.poll() is not None:
        daemon = start_ready(config, tmp_path / "d1.log")
        daemons.append(daemon)
    put(drop, "nudge.ndjson", records("RO-N", 1))  # the daemon retries what it holds, or not
    wait_for(lambda: in_done(drop, "good.ndjson"), 15, "good.ndjson in done/ once writable")
    assert keys(emu, "RO-0") == ["RO-000", "RO-001", "RO-002"], "records sent again"


# The ledger ------------------------------------------------------------------------------------


def _first_run(tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]) -> tuple[Path, Path]:
    """A daemon that delivered one file and stopped cleanly: the config and the drop folder."""
    config = write_config(tmp_path, emu.wsdl_url, **FAST)
    daemon = start_ready(config, tmp_path / "first.log")
    daemons.append(daemon)
    drop = tmp_path / "spool" / TABLE
    put(drop, "first.ndjson", records("L1-", 3))
    wait_for(lambda: in_done(drop, "first.ndjson"), 15, "the first file in done/")
    assert daemon.stop() == 0
    return config, drop


def test_ledger_on_a_read_only_disk(
    tmp_path: Path, emu: Emulator, mount: Mount, daemons: list[DaemonProcess]
) -> None:
    config, drop = _first_run(tmp_path, emu, daemons)
    ledger = tmp_path / "var" / "ledger.db"
    before = ledger.read_bytes()
    read_only(mount, ledger.parent)
    put(drop, "second.ndjson", records("L2-", 2))

    result = run_once(config)

    assert result.returncode == 2, result.stderr[-2000:]
    assert one_line_error(result.stderr), result.stderr[-2000:]
    assert str(ledger.parent) in result.stderr and "Read-only file system" in result.stderr
    assert (drop / "second.ndjson").exists(), "the dropped file was taken by a daemon that stopped"
    assert keys(emu) == ["L1-000", "L1-001", "L1-002"], "calls made without a ledger"
    assert ledger.read_bytes() == before


def test_ledger_on_a_full_disk(
    tmp_path: Path, emu: Emulator, mount: Mount, daemons: list[DaemonProcess]
) -> None:
    """The ledger's file system fills while the daemon runs: a commit fails, sending stops
    loudly (DESIGN §4); once there is room again, everything is delivered, nothing twice
    beyond the calls that were in flight."""
    var = tmp_path / "var"
    tmpfs(mount, var, "16m")
    config = write_config(tmp_path, emu.wsdl_url, **FAST)
    daemon = start_ready(config, tmp_path / "d0.log")
    daemons.append(daemon)
    drop = tmp_path / "spool" / TABLE
    put(drop, "before.ndjson", records("LF-A", 3))
    wait_for(lambda: in_done(drop, "before.ndjson"), 15, "a file delivered before the disk fills")
    filler = fill(var)
    put(drop, "during.ndjson", records("LF-B", 300))

    finish_or_exit(daemon, lambda: in_done(drop, "during.ndjson"), 30)
    log = daemon.output()
    if in_done(drop, "during.ndjson"):
        pytest.skip("the WAL had room for the whole file: the disk never ran full for SQLite")
    assert "full" in log, log[-2000:]
    assert daemon.proc.returncode == 2 and one_line_error(log), log[-2000:]
    assert list(drop.glob("failed/*")) == [], "a good file marked failed"

    filler.unlink()
    daemons.append(start_ready(config, tmp_path / "d1.log"))
    wait_for(lambda: in_done(drop, "during.ndjson"), 15, "the file delivered once there is room")
    sent = keys(emu, "LF-B")
    assert sorted(set(sent)) == [f"LF-B{i:03}" for i in range(300)], "a record lost"
    assert len(sent) - len(set(sent)) <= 8, "more repeats than calls in flight"
    assert keys(emu, "LF-A") == ["LF-A000", "LF-A001", "LF-A002"], "a file resent"


def test_ledger_deleted_while_stopped(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    config, drop = _first_run(tmp_path, emu, daemons)
    ledger = tmp_path / "var" / "ledger.db"
    for extra in ("", "-wal", "-shm"):
        Path(f"{ledger}{extra}").unlink(missing_ok=True)
    put(drop, "second.ndjson", records("L2-", 2))

    result = run_once(config)

    assert result.returncode == 2, result.stderr[-2000:]
    assert one_line_error(result.stderr)
    assert "ledger not found" in result.stderr and "done/" in result.stderr
    assert not ledger.exists(), "the ledger was recreated"
    assert (drop / "second.ndjson").exists()
    assert keys(emu) == ["L1-000", "L1-001", "L1-002"]


def test_ledger_corrupted_while_stopped(
    tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]
) -> None:
    config, drop = _first_run(tmp_path, emu, daemons)
    ledger = tmp_path / "var" / "ledger.db"
    assert not Path(f"{ledger}-wal").exists() or Path(f"{ledger}-wal").stat().st_size == 0
    size = ledger.stat().st_size
    assert size >= 8 * 4096, "a ledger this small has no middle to corrupt"
    with open(ledger, "r+b") as f:  # two pages in the middle, overwritten
        f.seek((size // 4096 // 2) * 4096)
        f.write(bytes(range(256)) * 32)
    corrupted = ledger.read_bytes()
    put(drop, "second.ndjson", records("L2-", 2))

    result = run_once(config)

    assert result.returncode == 2, result.stderr[-2000:]
    assert one_line_error(result.stderr), result.stderr[-2000:]
    assert str(ledger) in result.stderr
    assert "corrupt" in result.stderr or "malformed" in result.stderr
    assert ledger.read_bytes() == corrupted, "the corrupt ledger was changed or replaced"
    assert (drop / "second.ndjson").exists()
    assert keys(emu) == ["L1-000", "L1-001", "L1-002"]
