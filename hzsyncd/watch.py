"""Finding dropped files that are ready to take: watchdog events, the settle rule and rescans."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog import events as wd
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS
from watchdog.utils import UnsupportedLibcError

from hzsyncd.logs import event
from hzsyncd.spool import DropFolder, Spool, name_kind

# Where another machine writes, local inotify sees nothing: these are polled.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs",
     "ncpfs", "coda", "gfs2", "ocfs2", "beegfs", "gpfs", "orangefs", "virtiofs", "vboxsf", "fuse"}
)  # fmt: skip
# FUSE file systems on local storage: every write goes through this kernel, so inotify sees it.
LOCAL_FUSE = frozenset(
    {"fuse.ntfs-3g", "fuse.exfat", "fuse.encfs", "fuse.gocryptfs", "fuse.cryfs", "fuse.bindfs",
     "fuse.mergerfs", "fuse.squashfuse", "fuse.fuse-overlayfs"}
)  # fmt: skip

# Not FileClosedNoWriteEvent: a reader closing a file says nothing of whether its writer is
# done. Not DirModifiedEvent: it comes with every change in a watched folder and adds nothing.
_WANTED: list[type[wd.FileSystemEvent]] = [
    wd.FileClosedEvent, wd.FileCreatedEvent, wd.DirCreatedEvent, wd.FileModifiedEvent,
    wd.FileMovedEvent, wd.DirMovedEvent, wd.FileDeletedEvent, wd.DirDeletedEvent,
    wd.EventsLostEvent,
]  # fmt: skip
_NOT_REGULAR = {
    stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket",
}  # fmt: skip
_EVENT_LAG_NS = 500_000_000  # a write this recent may still have its IN_MODIFY on the way
_MISSING = (FileNotFoundError, NotADirectoryError)

Identity = tuple[int, int, int, int]  # device, inode, size, mtime_ns


@dataclass(frozen=True, order=True)
class Candidate:
    """A file ready to be taken; sorts parents' tables first, then oldest first."""

    rank: int
    mtime_ns: int
    name: str
    path: Path = field(compare=False)
    folder: DropFolder = field(compare=False)


@dataclass
class _File:
    """What is known of one accepted name in a drop folder."""

    folder: DropFolder
    writing: bool = False  # inotify saw it created or written, and no close-write since
    modified: bool = False  # written since: held until closed, however long that takes
    signalled: bool = False  # closed after writing, or moved in: ready without settling
    seen: Identity | None = None  # first observation of the current settle...
    seen_at: float = 0.0  # ...and when it was made
    offered: Identity | None = None  # handed out by ready() as this
    due: float = 0.0  # when to look at it again


class _Inbox(wd.FileSystemEventHandler):
    """Runs on the observer's thread: records events for the daemon's thread, decides nothing."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.wake_on_modify = False
        self._lock = threading.Lock()
        self._events: list[tuple[str, str, str]] = []

    def on_any_event(self, change: wd.FileSystemEvent) -> None:
        kind = change.event_type  # _WANTED only, by the observer's filter
        item = (kind, os.fsdecode(change.src_path), os.fsdecode(change.dest_path))
        with self._lock:
            if self._events and self._events[-1] == item:
                return  # a burst of writes to one file
            self._events.append(item)
            # Under inotify a write alone cannot make a file ready (its close will): waking the
            # daemon for each would only spin its loop while a big file is written.
            if kind != "modified" or self.wake_on_modify:
                self.wake.set()

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            events, self._events = self._events, []
            self.wake.clear()
        return events


class Watcher:
    """Finds the files of a spool's drop folders that are ready to be taken; takes none itself.

    A file is ready when inotify reports it closed after writing or moved in, or when it keeps
    its size and mtime for `settle_seconds` (files found by a scan, every file under polling);
    one inotify saw written and not yet closed is held. Events arrive on the observer's thread;
    the methods belong to one thread, the daemon's: start(), then wait() and ready() in a loop.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        settle_seconds: float,
        rescan_seconds: float,
        observer: str = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if observer not in ("auto", "inotify", "polling"):
            raise ValueError(f"observer must be auto, inotify or polling, not {observer!r}")
        self.settle_seconds = max(0.0, settle_seconds)
        self.rescan_seconds = rescan_seconds
        self.observer_kind = choose_observer(spool.root) if observer == "auto" else observer
        self._clock = clock
        self._dirs = {os.path.abspath(f.path): f for f in spool.drop_folders()}
        self._inbox = _Inbox()
        self._observer: BaseObserver | None = None
        self._unwatched: set[str] = set()
        self._files: dict[str, _File] = {}
        self._ready: list[Candidate] = []
        self._refused: list[tuple[Path, DropFolder, str]] = []
        self._reported: set[str] = set()  # refused, or logged as not ours: once while there
        self._next_scan = math.inf

    def start(self) -> None:
        """Watch every drop folder (not below them) and schedule the first scan for now."""
        if self._observer is not None:
            return
        if self.observer_kind == "inotify":
            try:
                self._observer = self._begin("inotify")
            # Watch or instance limits (OSError), no inotify in this libc, no thread to spare.
            except (OSError, ImportError, UnsupportedLibcError, RuntimeError) as exc:
                event(logging.WARNING, f"inotify unavailable ({exc}); polling the spool instead")
                self.observer_kind = "polling"
                self._unwatched.clear()  # to be named again by the polling observer
        if self._observer is None:
            self._observer = self._begin("polling")
        self._next_scan = self._clock()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and wait up to `timeout` seconds for its threads to end."""
        observer, self._observer = self._observer, None
        self._next_scan = math.inf
        if observer is not None:
            _halt(observer, timeout)

    def wait(self, timeout: float) -> bool:
        """Block until an event arrives (True), a settle or rescan is due, or `timeout` passes."""
        if self._ready:  # found by refused(); waiting on refusals would spin a loop ignoring them
            return False
        now = self._clock()
        due = min((f.due for f in self._files.values()), default=math.inf)
        delay = max(0.0, min(timeout, self._next_scan - now, due - now))
        return self._inbox.wake.wait(None if math.isinf(delay) else delay)

    def ready(self) -> list[Candidate]:
        """The files ready now, parents' tables first then (mtime_ns, name); each given once."""
        self._update()
        found, self._ready = sorted(self._ready), []
        return found

    def refused(self) -> list[tuple[Path, DropFolder, str]]:
        """Symlinks and other non-regular files under an accepted name, each given once."""
        self._update()
        found, self._refused = self._refused, []
        return found

    def forget(self, path: Path) -> None:
        """The daemon took `path` (or moved it away): a file under that name later is new."""
        key = os.path.abspath(path)
        self._files.pop(key, None)
        self._reported.discard(key)

    def _update(self) -> None:
        now = self._clock()
        for kind, src, dest in self._inbox.take():
            self._apply(kind, src, dest, now)
        if now >= self._next_scan:
            self._next_scan = now + self.rescan_seconds
            if self._observer is not None:
                self._watch_folders(self._observer, strict=False)
            self._scan(now)
        for path, f in list(self._files.items()):
            if f.due <= now:
                self._evaluate(path, f, now)

    def _apply(self, kind: str, src: str, dest: str, now: float) -> None:
        trusted = self.observer_kind == "inotify"
        if kind == "events_lost":
            # Whatever closes were lost, the settle rule still holds for every file.
            for f in self._files.values():
                f.writing = f.modified = False
            self._next_scan = now
            return
        if kind in ("deleted", "moved"):
            self._files.pop(src, None)
            self._reported.discard(src)
            if src in self._dirs:
                self._next_scan = now  # a drop folder went away: watch it again once back
            if not dest:
                return
            src = dest
        folder, naming = self._dirs.get(os.path.dirname(src)), name_kind(os.path.basename(src))
        if folder is not None and naming == "other":
            self._note_other(src, folder)
        if folder is None or naming != "accept":
            return
        if kind in ("created", "moved"):
            # A new file under this name, whatever was known of the old one.
            f = self._files[src] = _File(folder, writing=trusted and kind == "created")
            f.signalled = trusted and kind == "moved"
        else:
            f = self._files.setdefault(src, _File(folder))
        if kind == "closed":
            f.signalled, f.writing, f.modified = True, False, False
        elif kind == "modified" and trusted:
            f.writing = f.modified = True
            return  # nothing to look at until it is closed
        f.due = now

    def _note_other(self, path: str, folder: DropFolder) -> None:
        if path in self._reported:
            return
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return  # done/, failed/, delete/ and any folder of the user's own
        except OSError:
            return
        self._reported.add(path)
        fields = {"table": folder.table.name, "op": folder.op.value, "file": os.path.basename(path)}
        event(logging.INFO, "ignored: not a .json, .ndjson or .jsonl file", **fields)

    def _scan(self, now: float) -> None:
        listed: set[str] = set()
        for directory, folder in self._dirs.items():
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # missing or unreadable: _watch_folders warned
            for entry in entries:
                kind = name_kind(entry.name)
                if kind != "ignore":
                    listed.add(entry.path)
                if kind == "other":
                    self._note_other(entry.path, folder)
                elif kind == "accept" and entry.path not in self._files:
                    self._files[entry.path] = _File(folder)
        for f in self._files.values():
            f.due = min(f.due, now)
        self._reported &= listed  # gone: a new file under the name is reported again

    def _evaluate(self, path: str, f: _File, now: float) -> None:
        f.due = math.inf
        try:
            st = os.lstat(path)
        except _MISSING:
            del self._files[path]
            return
        except OSError:
            f.due = self._next_scan
            return
        if not stat.S_ISREG(st.st_mode):
            del self._files[path]
            if path not in self._reported:
                self._reported.add(path)
                what = _NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "a device")
                self._refused.append((Path(path), f.folder, f"{what}, not a regular file"))
            return
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        signalled, f.signalled = f.signalled, False
        if f.offered == ident:
            return  # given already, and not written since
        if signalled and st.st_size > 0:
            return self._offer(path, f, ident)
        # Closed empty: more likely `touch` or a writer about to reopen it than a finished drop
        # (an empty file is failed as such), so it settles like a scanned one.
        if f.writing:
            # Created with content and never written is a hard link, or a move watchdog took for
            # a creation: no close will come, the settle rule decides. Unless its mtime is so
            # recent that the write's IN_MODIFY may still be on its way to us.
            age = abs(time.time_ns() - st.st_mtime_ns)
            if f.modified or st.st_size == 0 or age < _EVENT_LAG_NS:
                f.seen = None
                if not f.modified and st.st_size > 0:
                    f.due = now + (_EVENT_LAG_NS - age) / 1e9
                return
        if f.seen != ident:
            f.seen, f.seen_at = ident, now
        if now - f.seen_at >= self.settle_seconds:
            self._offer(path, f, ident)
        else:
            f.due = f.seen_at + self.settle_seconds

    def _offer(self, path: str, f: _File, ident: Identity) -> None:
        f.offered, f.seen = ident, None
        rank = f.folder.table.rank
        self._ready.append(Candidate(rank, ident[3], os.path.basename(path), Path(path), f.folder))

    def _begin(self, kind: str) -> BaseObserver:
        """A started observer of `kind` watching every drop folder that exists."""
        observer: BaseObserver
        if kind == "inotify":
            from watchdog.observers.inotify import InotifyObserver

            # Full events report a move in from an unwatched folder as a move, not a creation.
            observer = InotifyObserver(generate_full_events=True)
        else:
            # lstat: a symlink is looked at, never followed. The interval only delays noticing a
            # new file; how long it must stay unchanged is settle_seconds, checked here.
            interval = max(0.25, min(1.0, self.settle_seconds))
            observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=interval)
        self._inbox.wake_on_modify = kind == "polling"
        observer.start()
        try:
            self._watch_folders(observer, strict=kind == "inotify")
        except BaseException:
            _halt(observer, 5.0)
            raise
        return observer

    def _watch_folders(self, observer: BaseObserver, *, strict: bool) -> None:
        """Watch each drop folder not watched, or whose watch ended with its folder; warn once
        of those that cannot be. `strict`: raise an OSError other than a missing folder."""
        for emitter in list(observer.emitters):
            if not emitter.is_alive():
                observer.unschedule(emitter.watch)
        watched = {emitter.watch.path for emitter in observer.emitters}
        lost = []
        for directory in self._dirs.keys() - watched:
            try:
                observer.schedule(self._inbox, directory, recursive=False, event_filter=_WANTED)
                self._unwatched.discard(directory)
            except OSError as exc:
                if strict and not isinstance(exc, _MISSING):
                    raise
                if directory not in self._unwatched:
                    self._unwatched.add(directory)
                    lost.append(f"{directory} ({exc.strerror or exc})")
        if lost:
            event(logging.WARNING, "drop folders not watched: " + ", ".join(sorted(lost)))


def _halt(observer: BaseObserver, timeout: float) -> None:
    """Stop `observer` and join its threads for at most `timeout` seconds: a polling emitter
    stuck on a hung network share would hold observer.stop() as long as the share hangs, and
    the daemon must be able to exit all the same (the threads are daemonic)."""

    def halt() -> None:
        observer.stop()
        if observer.is_alive():
            observer.join()

    stopper = threading.Thread(target=halt, name="hzsyncd-watch-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        event(logging.WARNING, f"file watcher did not stop within {timeout:g}s; left behind")


def choose_observer(root: Path, mountinfo: str | None = None) -> str:
    """ "polling" when `root` lies on a network file system, else "inotify".

    `mountinfo` is the text of /proc/self/mountinfo, read when not given; unreadable, it is
    taken as local (and a failing inotify falls back to polling anyway)."""
    if mountinfo is None:
        try:
            mountinfo = os.fsdecode(Path("/proc/self/mountinfo").read_bytes())
        except OSError:
            return "inotify"
    path, best, fstype = os.path.realpath(root), -1, ""
    for line in mountinfo.splitlines():
        # "36 25 0:42 / /srv/spool rw,relatime shared:9 - nfs4 host:/x rw,...": the mount point
        # is the fifth field (spaces escaped as \040), the type the first after " - ".
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        inside = point == "/" or path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the longest; the later of equals (mounted over)
            best, fstype = len(point), right.split()[0]
    network = fstype in NETWORK_FS or (fstype.startswith("fuse.") and fstype not in LOCAL_FUSE)
    return "polling" if network else "inotify"
