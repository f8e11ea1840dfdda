"""The duplicate rule for a batch of records at once: the fast path of a re-dropped file."""

from __future__ import annotations

import time

from hzsyncd.calls import CallPool
from hzsyncd.ledger import Decision, Ledger
from hzsyncd.reader import BadRecord, Record
from hzsyncd.tables import MissingKey, Table
from hzsyncd.work import Work

SEND = Decision("send")
DUPLICATE = Decision("duplicate")


class BatchStates:
    """What the duplicate rule needs of a batch's keys, read in three statements instead of
    three a record; duplicates found with it are written in one statement per batch.

    A key stops being answered from here once a record of it is sent or decided in the batch
    (`touch`), is open in the ledger, or has a call in flight: the ledger then decides.
    """

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._current: dict[str, tuple[str, str]] = {}
        self._open: set[str] = set()
        self._rejected: set[tuple[str, str, str]] = set()
        self._touched: set[str] = set()
        self._keys: dict[int, str] = {}
        self._table_name = self._op = ""
        self._duplicates: list[tuple[int, int, int, str, str, str, str, float]] = []
        self._now = 0.0

    def load(self, table: Table, op: str, items: list[Record | BadRecord]) -> None:
        keys = {}
        digests = []
        for item in items:
            if isinstance(item, Record):
                try:
                    keys[item.index] = key = table.key_of(item.data)
                except MissingKey:
                    continue
                digests.append((key, item.digest))
        self._keys, self._table_name, self._op = keys, table.name, op
        self._now = time.time()
        current, self._open = self.ledger.known_states(table.name, list(keys.values()))
        changed = [(key, op, digest) for key, digest in digests if current.get(key) != (op, digest)]
        self._current = current
        self._rejected = self.ledger.rejected_before(table.name, changed)
        self._touched = set()

    def key(self, item: Record | BadRecord) -> str | None:
        """The item's key, if this batch worked it out."""
        return self._keys.get(item.index)

    def decide(self, work: Work, item: Record, key: str, pool: CallPool) -> Decision | None:
        """DUPLICATE (buffered for `flush`), SEND, or None when the ledger must decide.
        Taken by every record of a re-dropped file: kept to dictionary look-ups."""
        if (
            key in self._touched
            or key in self._open
            or (len(pool) and pool.in_flight((self._table_name, key)) is not None)
        ):
            return None
        op, digest = self._op, item.digest
        if self._current.get(key) == (op, digest):
            self._duplicates.append(
                (work.file_id, item.index, item.line, self._table_name, op, key, digest, self._now)
            )
            return DUPLICATE
        if (key, op, digest) in self._rejected:
            return None
        return SEND

    def touch(self, key: str) -> None:
        self._touched.add(key)

    def flush(self) -> None:
        """Write the duplicates found (one statement for the batch)."""
        self.ledger.add_duplicates(self._duplicates)
        self._duplicates = []
