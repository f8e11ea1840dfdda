"""Background WAL checkpoints, so that copying pages into the database never delays a commit."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

INTERVAL_SECONDS = 1.0
# How long a RESTART may wait for the writer to finish its transaction; the writer releases
# its lock between two records, so this is rarely more than one record's bookkeeping.
RESTART_WAIT_SECONDS = 0.2


class Checkpointer:
    """A thread with a connection of its own that checkpoints the WAL every second.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, on the
    pipeline's thread. A PASSIVE checkpoint never blocks the writer, and SQLite releases the
    GIL while it copies, so that work moves to the other core. But under a steady stream of
    commits a PASSIVE checkpoint never catches up with the last frame, and SQLite only starts
    the WAL over when one has: the WAL would grow by every commit's pages for as long as
    sending goes on (1.3 GB for 60,000 records). So each round ends with a RESTART, which
    holds the writer off for the few frames written since the PASSIVE one, and makes the next
    commit write from the start of the file again.
    """

    def __init__(self, path: Path):
        self._conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=RESTART_WAIT_SECONDS
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hzsyncd-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            except sqlite3.Error:
                pass  # busy or locked: the next round tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()
