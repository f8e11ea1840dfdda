"""Logging to a real journald: HZSYNCD_* fields, priorities, messages, read by journalctl."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from journal import Journald, running_journald, unavailable

from hzsyncd import logs
from hzsyncd.logs import event

needs_journald = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture(scope="module")
def journald() -> Iterator[Journald]:
    with running_journald() as running:
        yield running


@pytest.fixture
def journal(journald: Journald, monkeypatch: pytest.MonkeyPatch) -> Iterator[Journald]:
    """hzsyncd's logger pointed at the test journald, as `[log] target = "journal"` does."""
    saved = (logs.log.handlers[:], logs.log.level, logs.log.propagate)
    monkeypatch.setenv(logs.JOURNAL_SOCKET_VARIABLE, journald.socket_path)
    logs.setup("journal", "debug")
    yield journald
    for handler in logs.log.handlers:
        handler.close()
    logs.log.handlers[:], level, logs.log.propagate = saved
    logs.log.setLevel(level)


@needs_journald
def test_event_fields_are_found_by_journalctl_match(journal: Journald) -> None:
    event(
        logging.WARNING,
        "org_property must be one of 1, 2, 3, 5, 9",
        table="org_info",
        file="a.ndjson",
        key="E1",
        outcome="rejected",
        code="invalid",
    )

    entries = journal.read(HZSYNCD_OUTCOME="rejected", HZSYNCD_KEY="E1")

    assert len(entries) == 1
    entry = entries[0]
    assert {name: value for name, value in entry.items() if name.startswith("HZSYNCD_")} == {
        "HZSYNCD_TABLE": "org_info",
        "HZSYNCD_FILE": "a.ndjson",
        "HZSYNCD_KEY": "E1",
        "HZSYNCD_OUTCOME": "rejected",
        "HZSYNCD_CODE": "invalid",
    }
    # The stderr line without its level: PRIORITY= says that.
    assert entry["MESSAGE"] == "org_info a.ndjson key=E1: org_property must be one of 1, 2, 3, 5, 9"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "hzsyncd"
    assert entry["_PID"] == str(os.getpid())
    assert entry["_TRANSPORT"] == "journal"


@needs_journald
def test_priority_follows_the_level(journal: Journald) -> None:
    levels = {
        logging.DEBUG: "7",
        logging.INFO: "6",
        logging.WARNING: "4",
        logging.ERROR: "3",
        logging.CRITICAL: "2",
    }
    for level in levels:
        event(level, "priority check", key=f"P{level}", code="priority")

    entries = journal.read(n=len(levels), HZSYNCD_CODE="priority")

    assert {e["HZSYNCD_KEY"]: e["PRIORITY"] for e in entries} == {
        f"P{level}": priority for level, priority in levels.items()
    }


@needs_journald
def test_level_below_the_configured_one_is_not_sent(journal: Journald) -> None:
    logs.log.setLevel(logging.INFO)
    event(logging.DEBUG, "record accepted", key="D1", code="below")
    event(logging.INFO, "file done", key="D2", code="below")

    assert [e["HZSYNCD_KEY"] for e in journal.read(HZSYNCD_CODE="below")] == ["D2"]


@needs_journald
def test_message_with_a_newline_stays_one_entry(journal: Journald) -> None:
    event(logging.WARNING, "first line\nsecond line", table="flat_info", key="N1")
    event(logging.INFO, "sentinel", key="N2")
    # journald takes datagrams in order: once the sentinel is in, so is all before it.
    assert journal.read(HZSYNCD_KEY="N2")

    entries = journal.read(HZSYNCD_KEY="N1")

    assert [e["MESSAGE"] for e in entries] == ["flat_info key=N1: first line\nsecond line"]
    assert journal.read(n=0, MESSAGE="second line") == []


@needs_journald
def test_error_with_exception_carries_the_traceback(journal: Journald) -> None:
    try:
        raise ValueError("ledger said no")
    except ValueError:
        logs.log.error("commit failed", exc_info=True, extra={"HZSYNCD_KEY": "X1"})

    [entry] = journal.read(HZSYNCD_KEY="X1")

    first, *rest = entry["MESSAGE"].split("\n")
    assert first == "key=X1: commit failed"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: ledger said no"


@needs_journald
def test_entry_larger_than_a_datagram_arrives_whole(journal: Journald) -> None:
    # Over the 8 MiB send buffer libsystemd asks for (the kernel may grant less): the sender
    # falls back to a sealed memfd, as sd_journal_send does.
    text = "x" * (9 << 20)
    event(logging.WARNING, text, key="L1")

    [entry] = journal.read(HZSYNCD_KEY="L1", timeout=10.0)

    assert entry["MESSAGE"] == f"key=L1: {text}"


@needs_journald
def test_file_name_that_is_not_utf8_arrives_as_its_bytes(journal: Journald) -> None:
    raw = "报送".encode("gb18030") + b".json"
    event(logging.WARNING, "unreadable", file=os.fsdecode(raw), key="G1")

    [entry] = journal.read(HZSYNCD_KEY="G1")

    # journalctl -o json gives data that is not UTF-8 as a list of byte values.
    assert bytes(entry["HZSYNCD_FILE"]) == raw


def test_missing_journald_socket_drops_the_entry_quietly(tmp_path: Path) -> None:
    sender = logs.JournalSender(str(tmp_path / "no-journald"))
    try:
        sender("nobody listens", PRIORITY="6")
    finally:
        sender.close()


def test_journal_stream_counts_only_when_it_names_our_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stderr", "w") as stderr, open(tmp_path / "other", "w") as other:
        monkeypatch.setattr(sys, "stderr", stderr)
        ours, theirs = os.fstat(stderr.fileno()), os.fstat(other.fileno())

        monkeypatch.setenv("JOURNAL_STREAM", f"{ours.st_dev}:{ours.st_ino}")
        assert logs.journal_available()
        # Inherited from a service by a shell's child: not our stderr.
        monkeypatch.setenv("JOURNAL_STREAM", f"{theirs.st_dev}:{theirs.st_ino}")
        assert not logs.journal_available()
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logs.journal_available()
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.journal_available()
