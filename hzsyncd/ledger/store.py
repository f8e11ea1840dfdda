"""The ledger's write side: files and records and their outcomes (the rule's reads: rule.py).

One Ledger is used by one thread at a time; the pipeline decides when to commit, so that a
re-dropped file of a million duplicates costs one commit per batch while every call is still
preceded by a committed `sending` mark.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from hzsyncd.errors import LedgerError
from hzsyncd.ledger.checkpoint import Checkpointer
from hzsyncd.ledger.rule import DuplicateRule
from hzsyncd.ledger.schema import SCHEMA_VERSION, migrations

BUSY_TIMEOUT_SECONDS = 10.0
CACHE_KIB = 4096

_RECORD_COLUMNS = (
    "id, file_id, idx, line, table_name, op, key, hash, state, outcome, code, messages, "
    "response, field, payload, attempts, next_at, relation_since, created_at, updated_at, "
    "duration_ms"
)


class Ledger(DuplicateRule):
    """An open ledger file. Use `Ledger.open(path)`; close with `close()` or `with`."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self.db = Database(conn)
        self.path = path
        self._checkpointer: Checkpointer | None = None

    @classmethod
    def open(cls, path: Path, *, create: bool, synchronous: str = "normal") -> Ledger:
        """Open the ledger at `path`; create it only when `create` is true.

        Raises LedgerError when the file is missing (and create is false), not a ledger,
        corrupt, or from a newer hzsyncd.
        """
        exists = path.exists()
        if not exists and not create:
            raise LedgerError(f"{path}: ledger not found")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # Twice SQLite's default: the upper levels of every index stay in memory, and the
            # process stays small however big the ledger (the leaves are in the OS's cache).
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            # Checkpoints run on a thread of their own (checkpoint.py), not inside a COMMIT.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
            if exists:
                check = conn.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise LedgerError(f"{path}: ledger is corrupt ({check and check[0]})")
            ledger = cls(conn, path)
            ledger._migrate(exists)
            ledger._checkpointer = Checkpointer(path)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot open ledger: {exc}") from exc
        return ledger

    def _migrate(self, existed: bool) -> None:
        names = set(self.db.table_names())
        if existed and names and "meta" not in names:
            raise LedgerError(f"{self.path}: not an hzsyncd ledger (tables: {sorted(names)})")
        if "meta" in names:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema {version} is newer than this hzsyncd "
                    f"understands ({SCHEMA_VERSION}); upgrade hzsyncd"
                )
        migrations.apply(self.db)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        try:
            # Fold the WAL back into the database, so the file stands alone between runs.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another connection reads: the next run checkpoints it
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Transactions -----------------------------------------------------------------------

    def begin(self) -> None:
        if not self._conn.in_transaction:
            self._execute("BEGIN IMMEDIATE")

    def commit(self, *, durable: bool = False) -> None:
        """Commit what is pending; `durable` also forces it to disk (before a file move)."""
        if self._conn.in_transaction:
            self._execute("COMMIT")
        if durable:
            # With synchronous=NORMAL a WAL commit is written but not fsynced. Syncing the WAL
            # file makes every commit so far durable; a checkpoint would too, but copies every
            # page of a big file's records. SQLite holds no POSIX locks on the -wal file, so
            # opening and closing it here cannot drop one.
            wal = self.path.with_name(self.path.name + "-wal")
            try:
                fd = os.open(wal if wal.exists() else self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise LedgerError(f"{self.path}: cannot sync to disk: {exc.strerror}") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: {exc}") from exc

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.begin()
        return self._execute(sql, params)

    # Files --------------------------------------------------------------------------------

    def add_file(self, **fields: Any) -> int:
        fields.setdefault("claimed_at", time.time())
        fields.setdefault("state", "claimed")
        return self._insert("files", fields)

    def update_file(self, file_id: int, **fields: Any) -> None:
        self._update("files", file_id, fields)

    def _insert(self, table: str, fields: dict[str, Any]) -> int:
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        cursor = self._write(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(fields.values())
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _update(self, table: str, row_id: int, fields: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._write(f"UPDATE {table} SET {assignments} WHERE id = ?", [*fields.values(), row_id])

    def file(self, file_id: int) -> dict[str, Any]:
        return self._one("SELECT * FROM files WHERE id = ?", [file_id]) or {}

    def unfinished_file(self, sha256: str, drop_dir: str) -> dict[str, Any] | None:
        """The not yet final claim of the same content in the same drop folder, to resume."""
        return self._one(
            "SELECT * FROM files WHERE sha256 = ? AND drop_dir = ? AND state != 'final' "
            "ORDER BY id DESC LIMIT 1",
            [sha256, drop_dir],
        )

    def checked_records(self, file_id: int, sha256: str) -> int | None:
        """How many records this file's content holds, if it was checked whole before."""
        row = self._execute(
            "SELECT records FROM files WHERE records IS NOT NULL AND reason IS NULL AND "
            "(id = ? OR (sha256 = ? AND state = 'final')) LIMIT 1",
            [file_id, sha256],
        ).fetchone()
        return None if row is None else int(row[0])

    def open_files(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM files WHERE state != 'final' ORDER BY id")

    # Records ------------------------------------------------------------------------------

    def record_at(self, file_id: int, idx: int) -> dict[str, Any] | None:
        return self._one(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE file_id = ? AND idx = ?", [file_id, idx]
        )

    def max_index(self, file_id: int) -> int:
        row = self._execute("SELECT max(idx) FROM records WHERE file_id = ?", [file_id]).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    def add_record(self, **fields: Any) -> int:
        now = time.time()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        if isinstance(fields.get("messages"), (list, tuple)):
            fields["messages"] = json.dumps(list(fields["messages"]), ensure_ascii=False)
        return self._insert("records", fields)

    def add_duplicates(
        self, rows: Sequence[tuple[int, int, int, str, str, str, str, float]]
    ) -> None:
        """Duplicates, one statement for any number: (file_id, idx, line, table, op, key,
        hash, time). The hot path of a re-dropped file: no call, no reply."""
        if not rows:
            return
        self.begin()
        try:
            self._conn.executemany(
                "INSERT INTO records (file_id, idx, line, table_name, op, key, hash, state, "
                "outcome, created_at, updated_at) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'final', 'duplicate', ?8, ?8)",
                rows,
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: {exc}") from exc

    def update_record(self, record_id: int, **fields: Any) -> None:
        fields.setdefault("updated_at", time.time())
        if isinstance(fields.get("messages"), (list, tuple)):
            fields["messages"] = json.dumps(list(fields["messages"]), ensure_ascii=False)
        self._update("records", record_id, fields)

    def mark_sending(self, record_id: int) -> None:
        self._write(
            "UPDATE records SET state = 'sending', attempts = attempts + 1, updated_at = ? "
            "WHERE id = ?",
            [time.time(), record_id],
        )

    def add_attempt(
        self,
        record_id: int,
        outcome: str,
        code: str | None,
        response: str | None,
        duration_ms: float,
    ) -> None:
        self._write(
            "INSERT INTO attempts (record_id, at, outcome, code, response, duration_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [record_id, time.time(), outcome, code, response, duration_ms],
        )

    def add_sending(
        self, file_id: int, idx: int, line: int, table: str, op: str, key: str, digest: str
    ) -> int:
        """A record met for the first time, about to be sent: its row, already `sending`."""
        now = time.time()
        cursor = self._write(
            "INSERT INTO records (file_id, idx, line, table_name, op, key, hash, state, "
            "attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'sending', 1, ?, ?)",
            (file_id, idx, line, table, op, key, digest, now, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def accept(
        self,
        record_id: int,
        table: str,
        key: str,
        op: str,
        digest: str,
        *,
        response: str | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """The server accepted the record: its row is final, and it becomes the key's current
        state. Fixed statements: this runs once for every record sent."""
        now = time.time()
        self._write(
            "UPDATE records SET state = 'final', outcome = 'ok', code = NULL, messages = '[]', "
            "response = ?, duration_ms = ?, updated_at = ? WHERE id = ?",
            (response, duration_ms, now, record_id),
        )
        self._execute(
            "INSERT INTO current (table_name, key, op, hash, record_id, accepted_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (table_name, key) DO UPDATE SET "
            "op = excluded.op, hash = excluded.hash, record_id = excluded.record_id, "
            "accepted_at = excluded.accepted_at",
            (table, key, op, digest, record_id, now),
        )

    def open_records(self, file_id: int) -> list[dict[str, Any]]:
        return self._all(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE file_id = ? AND state != 'final' "
            "ORDER BY idx",
            [file_id],
        )

    def failed_records(self, file_id: int) -> list[dict[str, Any]]:
        return self._all(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE file_id = ? AND state = 'final' "
            "AND outcome = 'rejected' ORDER BY idx",
            [file_id],
        )

    def count_outcomes(self, file_id: int) -> dict[str, int]:
        rows = self._execute(
            "SELECT coalesce(outcome, state), count(*) FROM records WHERE file_id = ? GROUP BY 1",
            [file_id],
        ).fetchall()
        return {str(name): int(count) for name, count in rows}

    def prune(self, older_than_days: float, now: float) -> int:
        """Drop history older than the limit: attempts, and the raw replies and payloads of
        final records. Record rows and the current state stay, so no decision changes."""
        cutoff = now - older_than_days * 86400
        dropped = self._write("DELETE FROM attempts WHERE at < ?", [cutoff]).rowcount
        self._write(
            "UPDATE records SET response = NULL, payload = NULL WHERE state = 'final' "
            "AND updated_at < ? AND (response IS NOT NULL OR payload IS NOT NULL)",
            [cutoff],
        )
        self.commit()
        return dropped

    def retryable_rejections(
        self, table: str | None, key: str | None, local_code: str
    ) -> list[dict[str, Any]]:
        """Records the server rejected (not those refused locally), oldest first."""
        return self._all(
            "SELECT r.id, r.table_name, r.key, r.op, r.hash, r.payload, f.name AS file "
            "FROM records r JOIN files f ON f.id = r.file_id "
            "WHERE r.state = 'final' AND r.outcome = 'rejected' AND r.payload IS NOT NULL "
            "AND coalesce(r.code, '') != ? AND (? IS NULL OR r.table_name = ?) "
            "AND (? IS NULL OR r.key = ?) ORDER BY r.id",
            [local_code, table, table, key, key],
        )

    def get_meta(self, key: str) -> str | None:
        row = self._execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )
        self.commit()

    def integrity(self) -> str:
        row = self._execute("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no answer"

    # Helpers -------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        cursor = self._execute(sql, params)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return next(self.query(sql, params), None)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.query(sql, params))

    # For the read-only views in reports.py, which share this connection.
    execute = _execute
    one = _one
    all = _all
