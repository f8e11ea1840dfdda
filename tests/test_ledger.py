"""The ledger on a real SQLite file: the duplicate rule, schema checks, pruning."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from hzsyncd.errors import LedgerError
from hzsyncd.ledger import SCHEMA_VERSION, Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    opened = Ledger.open(tmp_path / "ledger.db", create=True)
    yield opened  # type: ignore[misc]
    opened.close()


def accepted(ledger: Ledger, key: str, op: str, digest: str, file_id: int = 0) -> int:
    file_id = file_id or ledger.add_file(
        sha256="s", name="f", origin="o", drop_dir="d", table_name="org_info", op=op
    )
    record = ledger.add_record(
        file_id=file_id,
        idx=0,
        line=1,
        table_name="org_info",
        op=op,
        key=key,
        hash=digest,
        state="final",
        outcome="ok",
    )
    ledger.accept(record, "org_info", key, op, digest)
    ledger.commit()
    return record


def test_same_operation_and_hash_is_a_duplicate_anything_else_is_sent(ledger: Ledger) -> None:
    accepted(ledger, "E1", "report", "h1")
    assert ledger.decide("org_info", "E1", "report", "h1", None).action == "duplicate"
    assert ledger.decide("org_info", "E1", "report", "h2", None).action == "send"
    assert ledger.decide("org_info", "E1", "delete", "h1", None).action == "send"
    assert ledger.decide("org_info", "E2", "report", "h1", None).action == "send"
    assert ledger.decide("service_org_info", "E1", "report", "h1", None).action == "send"


def test_a_record_deleted_since_is_sent_again(ledger: Ledger) -> None:
    accepted(ledger, "E1", "report", "h1")
    accepted(ledger, "E1", "delete", "k1")
    assert ledger.decide("org_info", "E1", "report", "h1", None).action == "send"


def test_rejected_content_is_not_resent_and_its_reason_comes_back(ledger: Ledger) -> None:
    file_id = ledger.add_file(
        sha256="s", name="f", origin="o", drop_dir="d", table_name="org_info", op="report"
    )
    ledger.add_record(
        file_id=file_id,
        idx=0,
        line=1,
        table_name="org_info",
        op="report",
        key="E1",
        hash="h1",
        state="final",
        outcome="rejected",
        messages=["org_property取值范围应为[1, 2, 3, 5, 9, ]"],
    )
    decision = ledger.decide("org_info", "E1", "report", "h1", None)
    assert decision.action == "rejected" and decision.previous is not None
    assert "org_property" in decision.previous["messages"]
    assert ledger.decide("org_info", "E1", "report", "h2", None).action == "send"


def test_an_open_earlier_version_makes_later_ones_wait_even_duplicates(ledger: Ledger) -> None:
    accepted(ledger, "E1", "report", "h1")
    file_id = ledger.add_file(
        sha256="s2", name="g", origin="o", drop_dir="d", table_name="org_info", op="delete"
    )
    ledger.add_record(
        file_id=file_id,
        idx=0,
        line=1,
        table_name="org_info",
        op="delete",
        key="E1",
        hash="k",
        state="deferred",
    )
    assert ledger.decide("org_info", "E1", "report", "h1", None).action == "wait"
    current, open_keys = ledger.known_states("org_info", ["E1", "E2"])
    assert current == {"E1": ("report", "h1")} and open_keys == {"E1"}


def test_pruning_drops_old_history_and_never_a_decision(ledger: Ledger) -> None:
    record = accepted(ledger, "E1", "report", "h1")
    ledger.add_attempt(record, "ok", None, "", 3.0)
    ledger.commit()
    dropped = ledger.prune(1, now=10**10)
    assert dropped == 1
    assert ledger.decide("org_info", "E1", "report", "h1", None).action == "duplicate"


def test_schema_version_is_recorded_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, create=True).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert int(version[0]) == SCHEMA_VERSION
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="newer than this hzsyncd"):
        Ledger.open(path, create=False)


def test_missing_foreign_and_corrupt_files_are_refused_not_recreated(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not found"):
        Ledger.open(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE x (a)")
    with pytest.raises(LedgerError, match="not an hzsyncd ledger"):
        Ledger.open(other, create=False)
    broken = tmp_path / "broken.db"
    Ledger.open(broken, create=True).close()
    data = bytearray(broken.read_bytes())
    data[4096:8192] = b"\xde\xad" * 2048
    broken.write_bytes(bytes(data))
    with pytest.raises(LedgerError):
        Ledger.open(broken, create=False)


def test_wal_stays_small_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending commits once a record, with a call between two commits. A PASSIVE checkpoint
    never catches up with such a stream and SQLite then never starts the WAL over: it grew by
    every commit's pages (1.3 GB for 60,000 records) until the checkpointer ended each round
    with a RESTART."""
    from hzsyncd.ledger import checkpoint

    monkeypatch.setattr(checkpoint, "INTERVAL_SECONDS", 0.05)
    wal = tmp_path / "ledger.db-wal"
    with Ledger.open(tmp_path / "ledger.db", create=True) as ledger:
        file_id = ledger.add_file(
            sha256="s", name="f", origin="o", drop_dir="d", table_name="org_info", op="report"
        )
        biggest = 0
        for idx in range(3000):
            record = ledger.add_sending(file_id, idx, idx + 1, "org_info", "report", f"K{idx}", "h")
            ledger.commit()
            time.sleep(0.0005)  # the call: the writer holds no lock meanwhile
            ledger.accept(record, "org_info", f"K{idx}", "report", "h")
            biggest = max(biggest, wal.stat().st_size)
        written = ledger.one("SELECT count(*) AS n FROM records")
    assert written == {"n": 3000}
    # 3,000 commits of five or six 4 KiB pages each are about 70 MB of WAL if never restarted.
    assert biggest < 16 << 20, f"WAL grew to {biggest >> 20} MiB"
