"""The spool: drop-folder layout, which file names are taken, and moves that never overwrite."""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from hzsyncd.errors import SpoolError
from hzsyncd.tables import Operation, Table

ACCEPTED = (".json", ".ndjson", ".jsonl")
IGNORED = (".tmp", ".part", "~")  # and every name starting with "."
_MAX_COUNTER = 100_000


@dataclass(frozen=True)
class DropFolder:
    """One folder files are dropped in: a table's reports (`<root>/<table>/`) or deletes
    (`<root>/<table>/delete/`), with its `.work/`, `done/YYYY-MM-DD/` and `failed/` below it."""

    table: Table
    op: Operation
    path: Path

    @property
    def work_dir(self) -> Path:
        return self.path / ".work"

    @property
    def failed_dir(self) -> Path:
        return self.path / "failed"

    @property
    def done_root(self) -> Path:
        return self.path / "done"

    def done_dir(self, day: date) -> Path:
        return self.done_root / day.isoformat()

    def folders(self) -> list[Path]:
        """The folders that must exist: the drop folder itself, .work, done and failed."""
        return [self.path, self.work_dir, self.done_root, self.failed_dir]


class Spool:
    """The spool tree under `root`: one report and one delete drop folder per table.

    >>> spool = Spool(Path("/var/spool/hzsyncd"), TABLES)
    >>> spool.folder_of(Path("/var/spool/hzsyncd/org_info/delete/x.json")).op
    <Operation.DELETE: 'delete'>
    """

    def __init__(self, root: Path, tables: Mapping[str, Table]) -> None:
        self.root = root
        self.tables = tables
        # sorted() is stable: tables of the same rank keep the order they were given in.
        self._folders = [
            DropFolder(table, op, root / table.name / ("delete" if op is Operation.DELETE else ""))
            for table in sorted(tables.values(), key=lambda t: t.rank)
            for op in (Operation.REPORT, Operation.DELETE)
        ]
        self._by_path = {os.path.abspath(f.path): f for f in self._folders}

    def drop_folders(self) -> list[DropFolder]:
        """Every drop folder: parents' tables first, each table's reports before its deletes."""
        return list(self._folders)

    def drop_folder(self, table: str, op: Operation) -> DropFolder:
        """The drop folder of one table and operation; SpoolError for an unknown table."""
        for folder in self._folders:
            if folder.table.name == table and folder.op is op:
                return folder
        raise SpoolError(f"unknown table {table!r} (known: {', '.join(self.tables)})")

    def folder_of(self, path: Path) -> DropFolder | None:
        """The drop folder `path` sits directly in; None if elsewhere (done/, failed/, .work/...).

        Compared by absolute path without resolving symlinks, as watchers report paths."""
        return self._by_path.get(os.path.dirname(os.path.abspath(path)))

    def layout(self) -> list[Path]:
        """Every folder the spool needs, the root first, parents before children."""
        return [self.root] + [p for folder in self._folders for p in folder.folders()]

    def missing(self) -> list[Path]:
        """The folders of the layout that do not exist (or are not folders)."""
        return [path for path in self.layout() if not path.is_dir()]

    def init(self, mode: int = 0o2775, group: str | None = None) -> list[Path]:
        """Create the folders that are missing and return them; existing ones are left as they are.

        New folders get exactly `mode` (the umask would otherwise cut it; the default is group-
        writable with setgid, so files dropped by the exporters' group stay in that group) and,
        if given, `group`. Raises SpoolError naming the folder that could not be made.
        """
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise SpoolError(f"unknown group {group!r}") from None
        created = []
        for path in self.layout():
            try:
                path.mkdir(parents=path == self.root)
            except FileExistsError:
                if not path.is_dir():
                    raise SpoolError(f"{path}: exists and is not a folder") from None
                continue
            except OSError as exc:
                raise SpoolError(f"cannot create {path}: {exc.strerror}") from exc
            created.append(path)
            try:
                if group is not None:
                    shutil.chown(path, group=group)
                _chmod(path, mode)  # after chown, which may clear the setgid bit
            except OSError as exc:
                raise SpoolError(f"cannot set owner or mode of {path}: {exc.strerror}") from exc
        return created

    def has_done_files(self) -> bool:
        """Whether any file lies under any done/: proof the spool was served by a ledger."""
        for folder in self._folders:
            if not folder.done_root.is_dir():
                continue
            try:
                for _, _, files in os.walk(folder.done_root, onerror=_raise):
                    if files:
                        return True
            except OSError as exc:
                # Unreadable is not empty: guessing "no files" could let a ledger be recreated.
                raise SpoolError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        return False


def _raise(exc: OSError) -> None:
    raise exc


def name_kind(name: str) -> Literal["accept", "ignore", "other"]:
    """Whether a dropped file name is taken ("accept"), skipped silently ("ignore": hidden,
    temporary or partial files still being written), or skipped and logged once ("other")."""
    lower = name.lower()
    if name.startswith(".") or lower.endswith(IGNORED):
        return "ignore"
    return "accept" if lower.endswith(ACCEPTED) else "other"


def is_regular_file(path: Path) -> bool:
    """Whether `path` is a regular file itself: a symlink, even to a regular file, is not."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (files created, renamed or removed in it) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise SpoolError(f"cannot open folder {path}: {exc.strerror}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network and FUSE file systems cannot fsync a folder; there is nothing better to do.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise SpoolError(f"cannot sync folder {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def move_no_overwrite(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    """Move `src` (a symlink itself, not its target) into `dest_dir` as `name` (default its own
    name) or, if taken, `stem.1.suffix`, `stem.2.suffix`... (only the last suffix counts:
    `x.errors.ndjson` -> `x.errors.1.ndjson`). Never replaces a file, also against concurrent
    moves. `dest_dir` is created if needed; both folders are fsynced after the move.

    Returns the final path; raises SpoolError. Across file systems the file is copied to a hidden
    temporary name in `dest_dir`, fsynced, given its name, and only then removed from `src`.
    """
    name = name or src.name
    try:
        _make_dir(dest_dir)
        try:
            dest = _place(src, dest_dir, name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            dest = _copy_across(src, dest_dir, name)
        fsync_dir(dest_dir)
        fsync_dir(src.parent)
    except OSError as exc:
        raise SpoolError(f"cannot move {src} to {dest_dir}/: {exc.strerror or exc}") from exc
    return dest


def write_new(dest_dir: Path, name: str, data: bytes) -> Path:
    """Write `data` as a new file `name` in `dest_dir` (or `stem.1.suffix`... if taken), complete
    and durable before it appears under its name. Returns its path; raises SpoolError."""
    try:
        _make_dir(dest_dir)
        tmp = _temp_name(dest_dir)
        # 0o666 less the umask, like any new file: the exporters may need to read error reports.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            dest = _place(tmp, dest_dir, name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest_dir)
    except OSError as exc:
        raise SpoolError(f"cannot write {name} in {dest_dir}/: {exc.strerror or exc}") from exc
    return dest


def _names(name: str) -> Iterator[str]:
    """`name`, then `stem.1.suffix`, `stem.2.suffix`... (`name.1`... when it has no suffix)."""
    yield name
    stem, _, suffix = name.rpartition(".")
    for n in range(1, _MAX_COUNTER):
        yield f"{stem}.{n}.{suffix}" if stem else f"{name}.{n}"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _place(src: Path, dest_dir: Path, name: str) -> Path:
    """Give `src` the first free name of `_names(name)` in `dest_dir` on the same file system.

    Raises OSError with EXDEV when `dest_dir` is on another file system.
    """
    ident = _identity(src)
    for candidate in _names(name):
        dest = dest_dir / candidate
        try:
            _link_or_rename(src, dest)
        except FileExistsError:
            same = ident is not None and _identity(dest) == ident
            if same and os.path.abspath(dest) != os.path.abspath(src):
                # An earlier move stopped between link and unlink (a crash): finish it.
                os.unlink(src)
                return dest
            continue
        return dest
    raise SpoolError(f"no free name for {name} in {dest_dir}/ after {_MAX_COUNTER} tries")


# Errors of link() that mean "no hard links here" (EPERM also under fs.protected_hardlinks when
# the daemon does not own the file), not "name taken" or "other file system".
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _link_or_rename(src: Path, dest: Path) -> None:
    """Move `src` to `dest`, failing with FileExistsError if `dest` exists, whatever races."""
    try:
        # link() fails when the name is taken, atomically: no check-then-act window. It does not
        # follow a symlink (Linux linkat without AT_SYMLINK_FOLLOW), so links move as links.
        os.link(src, dest, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        _rename_noreplace(src, dest)
        return
    # Until the unlink both names exist (same inode); a crash here is finished by _place.
    fsync_dir(dest.parent)
    os.unlink(src)


_RENAME_LOCK = threading.Lock()
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _find_renameat2() -> Callable[..., int] | None:
    """Linux renameat2(), which the os module does not offer; None without it in the C library."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _find_renameat2()


def _rename_noreplace(src: Path, dest: Path) -> None:
    """rename() that fails with FileExistsError instead of replacing `dest`."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE):
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOSYS):  # else: flag unsupported by this fs
                raise OSError(err, os.strerror(err), str(src), None, str(dest))
        else:
            return
    # Last resort: check, then rename. The lock keeps this process's threads apart, and only the
    # daemon moves files into done/ and failed/; another process could still slip in between.
    with _RENAME_LOCK:
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
        os.rename(src, dest)


def _copy_across(src: Path, dest_dir: Path, name: str) -> Path:
    """Move `src` to another file system: copy, fsync, name without overwriting, then unlink."""
    tmp = _temp_name(dest_dir)
    try:
        if os.path.islink(src):
            os.symlink(os.readlink(src), tmp)
        elif is_regular_file(src):
            shutil.copy2(src, tmp)  # copy2 keeps mtime, which orders the queue
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            raise SpoolError(f"{src}: not a regular file or symlink, cannot copy it across")
        dest = _place(tmp, dest_dir, name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest_dir)
    os.unlink(src)
    return dest


def _temp_name(folder: Path) -> Path:
    # Starts with "." so that name_kind() ignores it should `folder` be watched.
    return folder / f".hzsyncd-{secrets.token_hex(8)}.tmp"


def _make_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent)  # the new folder's entry must survive a crash with the file


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except PermissionError:
        # systemd's RestrictSUIDSGID= forbids setting setgid; a folder made inside a setgid
        # folder (the spool root, from tmpfiles.d) has inherited the bit already.
        if not mode & stat.S_ISGID:
            raise
        os.chmod(path, mode & ~stat.S_ISGID)
