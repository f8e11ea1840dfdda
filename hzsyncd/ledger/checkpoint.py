"""Background WAL checkpoints, so that copying pages into the database never delays a commit."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

INTERVAL_SECONDS = 1.0


class Checkpointer:
    """A thread with a connection of its own that checkpoints the WAL every second.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold, on the
    pipeline's thread. PASSIVE checkpoints never block the writer, and SQLite releases the GIL
    while it copies, so this work moves to the other core.
    """

    def __init__(self, path: Path):
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hzsyncd-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass  # busy or locked: the next round tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._conn.close()
