"""`hzsyncd send`: one pass over given files, parents first, stopping at the first outage."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hzsyncd import spool as spool_mod
from hzsyncd.errors import ConfigError, IpDenied, ServiceError, TransportFailure
from hzsyncd.logs import event
from hzsyncd.session import Session, recover
from hzsyncd.spool import DropFolder, Spool
from hzsyncd.tables import Operation
from hzsyncd.work import FileReport

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_IP_DENIED = 0, 1, 2, 3, 4


@dataclass
class SendResult:
    reports: list[FileReport] = field(default_factory=list)
    stopped: ServiceError | None = None
    untouched: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if isinstance(self.stopped, IpDenied):
            return EXIT_IP_DENIED
        if isinstance(self.stopped, TransportFailure):
            return EXIT_UNREACHABLE
        if any(r.disposition not in ("done",) for r in self.reports):
            return EXIT_REJECTED
        return EXIT_OK


def plan(
    paths: Sequence[Path], spool: Spool, table: str | None, delete: bool
) -> list[tuple[Path, DropFolder]]:
    """Pair each file with its drop folder and order them as the daemon would.

    A file inside a drop folder belongs to it; any other file needs `--table` (and `--delete`
    for delete files). Tables go parents first; within a table, (mtime, name) order.
    """
    planned = []
    for path in paths:
        folder = spool.folder_of(path.absolute())
        if table is not None:
            op = Operation.DELETE if delete else Operation.REPORT
            if table not in spool.tables:
                raise ConfigError(
                    f"--table {table}: unknown table; known: {', '.join(spool.tables)}"
                )
            chosen = next(f for f in spool.drop_folders() if f.table.name == table and f.op is op)
            if folder is not None and folder != chosen:
                raise ConfigError(
                    f"{path}: lies in the {folder.table.name}/{folder.op} folder, not {table}/{op}"
                )
            folder = chosen
        if folder is None:
            raise ConfigError(
                f"{path}: not in a drop folder under {spool.root}; say which table with --table "
                "(and --delete for a delete file)"
            )
        if spool_mod.name_kind(path.name) != "accept":
            raise ConfigError(f"{path}: not a .json, .ndjson or .jsonl file")
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"{path}: no such file")
        planned.append((path, folder))

    def order(item: tuple[Path, DropFolder]) -> tuple[int, int, str]:
        path, folder = item
        return (folder.table.rank, path.lstat().st_mtime_ns, path.name)

    return sorted(planned, key=order)


def send_files(
    session: Session, paths: Sequence[Path], table: str | None = None, delete: bool = False
) -> SendResult:
    """Send the files once; a file that could not be finished goes back where it was."""
    planned = plan(paths, session.spool, table, delete)
    recover(session, put_back=True)
    result = SendResult()
    for number, (path, folder) in enumerate(planned):
        if not spool_mod.is_regular_file(path):
            report = FileReport(path, folder.table.name, folder.op.value, disposition="refused")
            report.reason = "a symbolic link or not a regular file: refused"
            event(logging.WARNING, report.reason, file=path.name, table=folder.table.name)
            result.reports.append(report)
            continue
        work = session.pipeline.claim(path, folder)
        try:
            report = session.pipeline.process(work, retry_deferred=True)
        except ServiceError as exc:
            back = session.pipeline.put_back(work)
            work.report.disposition = "returned"
            work.report.reason = str(exc)
            work.report.counts = session.ledger.count_outcomes(work.file_id)
            result.reports.append(work.report)
            result.stopped = exc
            result.untouched = [p for p, _ in planned[number + 1 :]]
            event(
                logging.ERROR,
                f"stopped: {exc}; the file is back as {back.name}",
                file=path.name,
                table=folder.table.name,
                op=folder.op.value,
            )
            break
        if report.disposition in ("waiting", "incomplete"):
            session.pipeline.put_back(work)
        result.reports.append(report)
    return result
