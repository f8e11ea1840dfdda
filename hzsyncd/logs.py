"""Logging for people: journald with HZSYNCD_* fields, or one line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

FIELDS = ("table", "op", "file", "key", "outcome", "code")

log = logging.getLogger("hzsyncd")


def event(level: int, message: str, /, **fields: Any) -> None:
    """Log one event; `fields` (table, op, file, key, outcome, code) become HZSYNCD_* fields."""
    extra = {f"HZSYNCD_{name.upper()}": str(value) for name, value in fields.items() if value}
    log.log(level, message, extra=extra)


class LineFormatter(logging.Formatter):
    """`LEVEL table/op file key=K: message` on one line; newlines in messages are folded."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, f"HZSYNCD_{name.upper()}", None) for name in FIELDS}
        where = " ".join(
            part
            for part in (
                "/".join(p for p in (fields["table"], fields["op"]) if p),
                fields["file"],
                f"key={fields['key']}" if fields["key"] else "",
            )
            if part
        )
        text = record.getMessage().replace("\n", " ⏎ ")
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only unexpected errors carry a traceback; expected conditions never do.
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        prefix = f"{record.levelname.lower():7} "
        return prefix + (f"{where}: {text}" if where else text)


def journal_available() -> bool:
    """Under systemd (stderr connected to the journal), or a journald socket to write to."""
    return bool(os.environ.get("JOURNAL_STREAM")) and _journal_module_present()


def _journal_module_present() -> bool:
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


def setup(target: str = "auto", level: str = "info") -> None:
    """Point the hzsyncd logger at journald or stderr (DESIGN §9)."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(level.upper())
    use_journal = target == "journal" or (target == "auto" and journal_available())
    handler: logging.Handler
    if use_journal:
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="hzsyncd")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
    log.addHandler(handler)
