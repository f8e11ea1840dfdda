"""One owner per spool and ledger: an exclusive lock that names its holder to whoever asks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hzsyncd.errors import HzsyncdError


class Busy(HzsyncdError):
    """Another hzsyncd process owns the spool or the ledger."""


def _holder(handle_path: Path) -> str:
    try:
        pid = int(handle_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmdline = ""
    return f"pid {pid}" + (f" ({cmdline})" if cmdline else "")


class LockError(HzsyncdError):
    """The lock file cannot be made or opened (a read-only or full file system)."""


class OwnerLock:
    """Holds `flock` locks on files beside the ledger and in the spool root until released.

    flock locks vanish with the process, so a crash never leaves a stale lock behind.
    """

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._fds: list[int] = []

    def acquire(self) -> OwnerLock:
        try:
            for path in self.paths:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise LockError(f"{path}: cannot open the lock file: {exc.strerror}") from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise Busy(f"{path.parent} is in use by hzsyncd {_holder(path)}") from None
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fds.append(fd)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> OwnerLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def owner_lock(spool_root: Path, ledger_path: Path) -> OwnerLock:
    return OwnerLock(
        [ledger_path.with_name(ledger_path.name + ".lock"), spool_root / ".hzsyncd.lock"]
    )
