"""Logging for people: journald with HZSYNCD_* fields, or one line per event on stderr."""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from typing import Any

from systemd import journal

FIELDS = ("table", "op", "file", "key", "outcome", "code")

# Where journald listens. A unit with LogNamespace= finds its namespace's socket here too (systemd
# mounts it over this path), so only a process outside systemd needs the variable: the tests,
# which run their own journald in a namespace (tests/journal.py).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_SOCKET_VARIABLE = "HZSYNCD_JOURNAL_SOCKET"

log = logging.getLogger("hzsyncd")


def event(level: int, message: str, /, **fields: Any) -> None:
    """Log one event; `fields` (table, op, file, key, outcome, code) become HZSYNCD_* fields."""
    if not log.isEnabledFor(level):
        return  # one "accepted" a record at debug level: not worth building when unseen
    extra = {f"HZSYNCD_{name.upper()}": str(value) for name, value in fields.items() if value}
    log.log(level, message, extra=extra)


def _where(record: logging.LogRecord) -> str:
    """`table/op file key=K`, from whichever of the fields the record has."""
    fields = {name: getattr(record, f"HZSYNCD_{name.upper()}", None) for name in FIELDS}
    return " ".join(
        part
        for part in (
            "/".join(p for p in (fields["table"], fields["op"]) if p),
            fields["file"],
            f"key={fields['key']}" if fields["key"] else "",
        )
        if part
    )


class LineFormatter(logging.Formatter):
    """`LEVEL table/op file key=K: message` on one line; newlines in messages are folded."""

    def format(self, record: logging.LogRecord) -> str:
        where = _where(record)
        text = record.getMessage().replace("\n", " ⏎ ")
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only unexpected errors carry a traceback; expected conditions never do.
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        prefix = f"{record.levelname.lower():7} "
        return prefix + (f"{where}: {text}" if where else text)


class JournalFormatter(logging.Formatter):
    """MESSAGE= for journald: the stderr line without the level (PRIORITY= carries it).

    Newlines stay: the native protocol keeps a multi-line value in one entry, and journalctl
    indents its continuation lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        where = _where(record)
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{where}: {text}" if where else text


# journald drops a field whose name breaks these rules; a leading "_" is for fields it adds.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


class JournalSender:
    """journald's native protocol over its datagram socket (systemd.io/JOURNAL_NATIVE_PROTOCOL).

    libsystemd's sd_journal_send, behind systemd.journal.send, can only write to the built-in
    /run/systemd/journal/socket; this sender takes the socket as a parameter and is otherwise
    the same: one datagram per entry, and an entry too large for a datagram passed as a sealed
    memfd. Called as JournalHandler's sender_function.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # As libsystemd does: large entries without a detour through memfd when allowed.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        except OSError:
            pass

    def __call__(self, MESSAGE: str, **fields: Any) -> None:
        data = _entry({"MESSAGE": MESSAGE, **fields})
        try:
            self._sock.sendto(data, self.path)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return  # no journald: dropped without a word, as sd_journal_send does
            if error.errno not in (errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # journald only accepts a memfd sealed against change, so it can map it safely.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            # Not socket.send_fds: in Python 3.11 it ignores its flags and address arguments.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()


def _entry(fields: dict[str, Any]) -> bytes:
    """The datagram: `NAME=value\\n`, or `NAME\\n<64-bit LE length><value>\\n` for multi-line."""
    parts = []
    for name, value in fields.items():
        if value is None or not _FIELD_NAME.fullmatch(name):
            continue
        if isinstance(value, bytes):
            data = value
        else:
            # surrogateescape: a file name that was not UTF-8 goes out as its original bytes.
            data = str(value).encode("utf-8", "surrogateescape")
        key = name.encode("ascii")
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


class JournalHandler(journal.JournalHandler):  # type: ignore[misc]
    """python-systemd's handler (fields from `extra`, PRIORITY from the level), our sender."""

    def __init__(self, path: str, level: int = logging.NOTSET) -> None:
        self.sender = JournalSender(path)
        super().__init__(level, sender_function=self.sender, SYSLOG_IDENTIFIER="hzsyncd")
        self.setFormatter(JournalFormatter())

    def close(self) -> None:
        self.sender.close()
        super().close()


def journal_socket() -> str:
    """The journald socket to write to: `$HZSYNCD_JOURNAL_SOCKET`, else the system's."""
    return os.environ.get(JOURNAL_SOCKET_VARIABLE) or JOURNAL_SOCKET


def journal_available() -> bool:
    """Whether stderr is connected to the journal, as systemd does for a service."""
    # JOURNAL_STREAM is inherited by every child; it only means us when it names our stderr
    # (systemd.exec(5), $JOURNAL_STREAM).
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup(target: str = "auto", level: str = "info") -> None:
    """Point the hzsyncd logger at journald or stderr (DESIGN §9)."""
    for old in log.handlers[:]:
        log.removeHandler(old)
        old.close()
    log.propagate = False
    log.setLevel(level.upper())
    use_journal = target == "journal" or (target == "auto" and journal_available())
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler(journal_socket())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
    log.addHandler(handler)
