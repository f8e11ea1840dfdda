"""The end of a file: done/ or failed/ with its errors report, recorded durably in the ledger."""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import simplejson

from hzsyncd import spool as spool_mod
from hzsyncd.ledger import Ledger
from hzsyncd.logs import event
from hzsyncd.outcomes import INVALID_CODE, Outcome
from hzsyncd.spool import DropFolder
from hzsyncd.work import FileReport, Work, identity


class Disposer:
    """Moves finished files and keeps the ledger's file rows in step with the moves."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float]):
        self.ledger = ledger
        self.clock = clock

    def finish(self, work: Work) -> FileReport:
        """Move the file to done/ or failed/ when every record is final; else report waiting."""
        report = work.report
        counts = self.ledger.count_outcomes(work.file_id)
        report.counts = counts
        report.records = sum(counts.values()) or report.records
        open_rows = self.ledger.open_records(work.file_id)
        if open_rows:
            report.disposition = "waiting"
            return report
        if not os.path.lexists(work.work):
            return self.vanished(work)
        if identity(work.work) != work.identity:
            return self.fail_whole(work, "the file changed while it was being processed", 0)
        failed = counts.get(Outcome.REJECTED.value, 0) > 0
        return self._dispose(work, "failed" if failed else "done", None)

    def vanished(self, work: Work) -> FileReport:
        """The file left .work/ while it was processed (deleted or moved by hand): nothing to
        move; the ledger says so and the daemon goes on."""
        reason = "the file was removed from .work/ while it was being processed"
        self.ledger.update_file(
            work.file_id,
            state="final",
            disposition="missing",
            work_path=None,
            reason=reason,
            finished_at=time.time(),
        )
        self.ledger.commit(durable=True)
        event(
            logging.ERROR,
            reason,
            table=work.folder.table.name,
            op=work.folder.op.value,
            file=work.name,
            outcome=Outcome.REJECTED.value,
        )
        work.report.disposition, work.report.reason = "failed", reason
        return work.report

    def fail_whole(
        self, work: Work, reason: str, line: int, field: str | None = None
    ) -> FileReport:
        self.ledger.update_file(work.file_id, reason=reason, line=line, field=field)
        work.report.reason = reason
        event(
            logging.WARNING,
            f"file refused: {reason}" + (f" (line {line})" if line else ""),
            table=work.folder.table.name,
            op=work.folder.op.value,
            file=work.name,
            outcome=Outcome.REJECTED.value,
            code=INVALID_CODE,
        )
        work.report.rejections.append({"line": line, "field": field, "messages": [reason]})
        return self._dispose(work, "failed", {"line": line, "field": field, "reason": reason})

    def _dispose(self, work: Work, disposition: str, whole: dict[str, Any] | None) -> FileReport:
        folder = work.folder
        if not work.report.counts:
            work.report.counts = self.ledger.count_outcomes(work.file_id)
        self.ledger.update_file(work.file_id, state="moving", disposition=disposition)
        self.ledger.commit(durable=True)
        if disposition == "done":
            # done/ is dated in local time: the day the admin sees on the wall.
            day = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).astimezone().date()
            dest_dir = folder.done_dir(day)
        else:
            dest_dir = folder.failed_dir
        dest = spool_mod.move_no_overwrite(work.work, dest_dir, work.name)
        self.complete_move(work.file_id, dest, whole)
        report = work.report
        report.disposition = disposition
        report.dest = dest
        if report.counts.get(Outcome.REJECTED.value):
            report.rejections.extend(self.rejections(work.file_id))
        summary = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items())) or "no records"
        event(
            logging.WARNING if disposition == "failed" else logging.INFO,
            f"{disposition}: {summary} → {dest.relative_to(folder.path)}",
            table=folder.table.name,
            op=folder.op.value,
            file=work.name,
        )
        return report

    def complete_move(self, file_id: int, dest: Path, whole: dict[str, Any] | None = None) -> None:
        """Record a finished move; a failed file gets its errors report beside it."""
        row = self.ledger.file(file_id)
        if row.get("disposition") == "failed":
            if whole is None and row.get("reason"):
                whole = {"line": row["line"] or 0, "field": row["field"], "reason": row["reason"]}
            self.write_errors(file_id, dest, whole)
        self.ledger.update_file(
            file_id, state="final", dest=str(dest), work_path=None, finished_at=time.time()
        )
        self.ledger.commit(durable=True)

    def rejections(self, file_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """The first rejected records of a file, for reports (the errors file has them all)."""
        found = []
        for row in self.ledger.failed_records(file_id)[:limit]:
            found.append(
                {
                    "line": row["line"],
                    "key": row["key"],
                    "code": row["code"],
                    "field": row["field"],
                    "messages": simplejson.loads(row["messages"]) if row["messages"] else [],
                }
            )
        return found

    def write_errors(self, file_id: int, dest: Path, whole: dict[str, Any] | None) -> Path:
        """`<name>.errors.ndjson` beside a failed file: one line per record that failed."""
        lines = []
        if whole is not None:
            lines.append(
                {
                    "line": whole["line"],
                    "index": None,
                    "key": None,
                    "outcome": "rejected",
                    "code": INVALID_CODE,
                    "field": whole["field"],
                    "messages": [whole["reason"]],
                    "record": None,
                }
            )
        for row in self.ledger.failed_records(file_id):
            lines.append(
                {
                    "line": row["line"],
                    "index": row["idx"],
                    "key": row["key"],
                    "outcome": row["outcome"],
                    "code": row["code"],
                    "field": row["field"],
                    "messages": simplejson.loads(row["messages"]) if row["messages"] else [],
                    "record": _as_record(row["payload"]),
                }
            )
        data = "".join(
            simplejson.dumps(line, ensure_ascii=False, use_decimal=True) + "\n" for line in lines
        ).encode()
        return spool_mod.write_new(dest.parent, dest.name + ".errors.ndjson", data)


def _as_record(payload: str | None) -> Any:
    """The record as an object when it parses (so it can be fixed and re-dropped), else text."""
    if payload is None:
        return None
    try:
        record = simplejson.loads(payload, use_decimal=True)
        # Refused for nesting too deep to decode, or for a lone surrogate that no UTF-8 can
        # carry: such a record is reported as the text it was.
        simplejson.dumps(record, ensure_ascii=False, use_decimal=True).encode()
    except (ValueError, RecursionError, UnicodeEncodeError):
        return payload
    return record


def refuse(path: Path, folder: DropFolder, reason: str) -> None:
    """A file the daemon will not take (a FIFO or symlink with a data name, one it cannot
    read): logged, and moved to failed/ with a one-line errors report, without a ledger row.
    A directory is only logged: it may be someone's work in progress."""
    event(
        logging.WARNING,
        f"refused: {reason}",
        table=folder.table.name,
        op=folder.op.value,
        file=path.name,
        outcome="rejected",
        code="invalid",
    )
    if path.is_dir() and not path.is_symlink():
        return
    try:
        dest = spool_mod.move_no_overwrite(path, folder.failed_dir)
        line = {
            "line": 0,
            "index": None,
            "key": None,
            "outcome": "rejected",
            "code": "invalid",
            "field": None,
            "messages": [reason],
            "record": None,
        }
        spool_mod.write_new(
            folder.failed_dir,
            dest.name + ".errors.ndjson",
            (simplejson.dumps(line, ensure_ascii=False) + "\n").encode(),
        )
    except OSError as exc:
        event(logging.ERROR, f"cannot move to failed/: {exc}", file=path.name)
