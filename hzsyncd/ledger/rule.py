"""The rule against sending twice (DESIGN §4): the ledger's reads that decide a record."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["send", "duplicate", "rejected", "wait"]


@dataclass(frozen=True)
class Decision:
    """What to do with a record: `previous` holds the stored rejection for `rejected`."""

    action: Action
    previous: dict[str, Any] | None = None


class DuplicateRule:
    """What the ledger knows of keys: their current state, open records and past rejections.
    Ledger (store.py) inherits it and provides the two ways of reading below."""

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        raise NotImplementedError

    def decide(self, table: str, key: str, op: str, digest: str, record_id: int | None) -> Decision:
        """Apply the duplicate rule (DESIGN §4) to a record about to be sent.

        `wait` means an earlier record of the same key is not final yet: sending this one
        would let it overtake that one.
        """
        # An earlier version still open goes first, even where this one looks like a
        # duplicate: that version may yet change what the server holds.
        earlier = self._execute(
            "SELECT id FROM records WHERE table_name = ? AND key = ? AND state != 'final' "
            "AND id < ? LIMIT 1",
            [table, key, record_id if record_id is not None else 2**62],
        ).fetchone()
        if earlier is not None:
            return Decision("wait")
        cur = self._execute(
            "SELECT op, hash FROM current WHERE table_name = ? AND key = ?", [table, key]
        ).fetchone()
        if cur is not None and cur[0] == op and cur[1] == digest:
            return Decision("duplicate")
        rejected = self._one(
            "SELECT id, outcome, code, messages, response FROM records "
            "WHERE table_name = ? AND key = ? AND op = ? AND hash = ? AND state = 'final' "
            "AND outcome = 'rejected' AND id != ? ORDER BY id DESC LIMIT 1",
            [table, key, op, digest, record_id or 0],
        )
        if rejected is not None:
            return Decision("rejected", rejected)
        return Decision("send")

    def _rows_for_keys(self, sql: str, table: str, keys: Iterable[str]) -> Iterator[Any]:
        """Rows of `sql` (whose `{keys}` is an IN list) for many keys, 500 to a statement: well
        under SQLite's limit on parameters."""
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            yield from self._execute(sql.format(keys=",".join("?" * len(part))), [table, *part])

    def known_states(
        self, table: str, keys: Sequence[str]
    ) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """For a batch of keys: each key's current (op, hash), and the keys that have a record
        not yet final. The pipeline's fast path for duplicates."""
        current = {
            key: (op, digest)
            for key, op, digest in self._rows_for_keys(
                "SELECT key, op, hash FROM current WHERE table_name = ? AND key IN ({keys})",
                table,
                keys,
            )
        }
        # Usually no record of the table is open; then one look at the small index suffices.
        any_open = self._execute(
            "SELECT 1 FROM records WHERE table_name = ? AND state != 'final' LIMIT 1", [table]
        ).fetchone()
        if any_open is None:
            return current, set()
        open_keys = {
            key
            for (key,) in self._rows_for_keys(
                "SELECT DISTINCT key FROM records WHERE table_name = ? AND key IN ({keys}) "
                "AND state != 'final'",
                table,
                keys,
            )
        }
        return current, open_keys

    def rejected_before(
        self, table: str, candidates: Sequence[tuple[str, str, str]]
    ) -> set[tuple[str, str, str]]:
        """Of (key, op, hash) triples, those the server rejected before: the batch form of
        `decide`'s third question, asked only for the records that are not duplicates."""
        wanted = set(candidates)
        rows = self._rows_for_keys(
            "SELECT key, op, hash FROM records WHERE table_name = ? AND key IN ({keys}) "
            "AND state = 'final' AND outcome = 'rejected'",
            table,
            (key for key, _, _ in candidates),
        )
        return {row for row in rows if row in wanted}

    def current(self, table: str, key: str) -> dict[str, Any] | None:
        """The key's last accepted operation and hash: the duplicate rule's only input."""
        return self._one("SELECT * FROM current WHERE table_name = ? AND key = ?", [table, key])
