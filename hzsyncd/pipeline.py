"""One file through the pipeline: claim → check → read → send each record → dispose."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hzsyncd import spool as spool_mod
from hzsyncd.calls import CallPool
from hzsyncd.client import ReportClient
from hzsyncd.config import Config
from hzsyncd.disposal import Disposer
from hzsyncd.errors import IncompleteFile, InputError, Interrupted
from hzsyncd.ledger import Ledger
from hzsyncd.logs import event
from hzsyncd.reader import BadRecord, Record, check_file, read_records
from hzsyncd.records import RecordSender
from hzsyncd.spool import DropFolder
from hzsyncd.work import FileReport, Work, identity, sha256_of

# A stopping daemon waits this long for calls in flight (systemd allows it 15 s in all).
STOP_GRACE_SECONDS = 5.0
# Duplicates cost no call; deciding and committing them in batches keeps a re-dropped file
# cheap: the ledger is asked about BATCH keys at a time.
BATCH = 500
COMMIT_EVERY = 5000


class Pipeline:
    """Sends files through the ledger to the service; shared by `send` and the daemon.

    A TransportFailure or IpDenied propagates after the ledger is consistent and the file is
    left claimed in `.work/`; the caller puts it back (`send`) or retries it later (daemon).
    """

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        client: ReportClient,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.ledger = ledger
        self.client = client
        self.clock = clock
        self.pool = CallPool(client, config.service.max_in_flight, config.service.rate_limit)
        self.records = RecordSender(config, ledger, self.pool, clock)
        self.disposer = Disposer(ledger, clock)

    # Claiming ------------------------------------------------------------------------------

    def claim(self, path: Path, folder: DropFolder) -> Work:
        """Move a dropped file into `.work/` and register it (or resume its earlier claim)."""
        origin = path
        try:  # unreadable (a non-root daemon and an exporter's 0600 file): refused, not claimed
            with open(path, "rb"):
                pass
        except PermissionError as exc:
            raise InputError(path, f"cannot read the file: {exc.strerror}") from None
        if path.parent != folder.work_dir:
            path = spool_mod.move_no_overwrite(path, folder.work_dir)
        stat = identity(path)
        digest = sha256_of(path)
        row = self.ledger.unfinished_file(digest, str(folder.path))
        if row is None:
            file_id = self.ledger.add_file(
                sha256=digest,
                name=origin.name,
                origin=str(origin),
                drop_dir=str(folder.path),
                table_name=folder.table.name,
                op=folder.op.value,
                work_path=str(path),
                dev=stat[0],
                ino=stat[1],
                size=stat[2],
                mtime_ns=stat[3],
            )
            name = origin.name
        else:
            file_id = int(row["id"])
            name = str(row["name"])
            self.ledger.update_file(
                file_id,
                state="claimed",
                work_path=str(path),
                origin=str(origin) if path != origin else row["origin"],
                dev=stat[0],
                ino=stat[1],
                size=stat[2],
                mtime_ns=stat[3],
            )
        self.ledger.commit()
        report = FileReport(origin, folder.table.name, folder.op.value)
        return Work(file_id, folder, path, origin, name, stat, report, digest)

    def resume(self, row: dict[str, Any], folder: DropFolder) -> Work:
        """A file left in `.work/` by an earlier run, as the ledger knows it."""
        work = Path(row["work_path"])
        report = FileReport(Path(row["origin"]), folder.table.name, folder.op.value)
        return Work(
            int(row["id"]),
            folder,
            work,
            Path(row["origin"]),
            str(row["name"]),
            (row["dev"], row["ino"], row["size"], row["mtime_ns"]),
            report,
            str(row["sha256"]),
        )

    def put_back(self, work: Work) -> Path:
        """Return an unfinished file to where it was dropped; its ledger rows stay."""
        back = spool_mod.move_no_overwrite(work.work, work.origin.parent, work.origin.name)
        self.ledger.update_file(work.file_id, state="returned", work_path=None, origin=str(back))
        self.ledger.commit(durable=True)
        return back

    # Processing ----------------------------------------------------------------------------

    def process(
        self,
        work: Work,
        *,
        retry_deferred: bool = False,
        tick: Callable[[], bool] | None = None,
    ) -> FileReport:
        """Send every record of a claimed file that needs sending, then dispose of the file.

        `retry_deferred` sends deferred records now even before their backoff ends (`send`).
        `tick` is called after each record (the daemon feeds its watchdog there); when it
        returns True the file is left claimed and Interrupted is raised.
        """
        report = work.report
        try:
            records = self._checked(work)
        except IncompleteFile as exc:
            age = self.clock() - work.identity[3] / 1e9
            if age < self.config.spool.incomplete_seconds:
                report.disposition = "incomplete"
                report.reason = str(exc)
                return report
            return self.disposer.fail_whole(work, f"truncated: {exc.reason}", exc.line)
        except InputError as exc:
            return self.disposer.fail_whole(work, exc.reason, exc.line, exc.field)
        report.records = records
        self.ledger.update_file(work.file_id, records=records)

        resume_upto = self.ledger.max_index(work.file_id)
        self.records.heartbeat = tick
        since_commit = 0
        items = read_records(work.work, self.config.spool.encoding)
        try:
            while batch := list(itertools.islice(items, BATCH)):
                self.records.prefetch(work, [i for i in batch if i.index > resume_upto])
                for item in batch:
                    if item.index > resume_upto:
                        self.records.first_time(work, item)
                        if self.records.failure is not None:
                            self.records.checkpoint()
                    else:
                        self._resume_one(work, item, retry_deferred)
                    if tick is not None and tick():
                        self.records.flush()
                        self._interrupt()
                self.records.flush()
                since_commit += len(batch)
                if since_commit >= COMMIT_EVERY:
                    self.ledger.commit()
                    since_commit = 0
            self.records.drain()
            self.records.checkpoint()
        finally:
            self.records.heartbeat = None
            # Duplicates found before a failure or a stop are decided: write them, or the next
            # pass would find them buffered and write them twice.
            self.records.flush()
            self.ledger.commit()
        return self.disposer.finish(work)

    def _checked(self, work: Work) -> int:
        """The first pass (DESIGN §2): syntax to the end and the count of records.

        Content already read to its end once, under any name, is complete and well formed:
        its count comes from the ledger, and a re-dropped file is read only once.
        """
        known = self.ledger.checked_records(work.file_id, work.sha256)
        if known is not None:
            return known
        return check_file(work.work, self.config.spool.encoding).records

    def _resume_one(self, work: Work, item: Record | BadRecord, force: bool) -> None:
        """A record of a file met before: only what is not final yet needs anything."""
        row = self.ledger.record_at(work.file_id, item.index)
        if row is None:
            self.records.first_time(work, item)
        elif row["state"] != "final":
            self.records.retry(work, row, item, force=force)
        self.records.checkpoint()

    def _interrupt(self) -> None:
        """Stop mid-file: wait briefly for the calls in flight, abandon the rest."""
        if not self.records.drain(timeout=STOP_GRACE_SECONDS):
            event(logging.WARNING, f"{len(self.pool)} call(s) abandoned; sent again at restart")
        raise Interrupted("stopped while sending")

    def close(self) -> None:
        self.pool.close()

    def finish(self, work: Work) -> FileReport:
        return self.disposer.finish(work)

    def complete_move(self, file_id: int, dest: Path) -> None:
        self.disposer.complete_move(file_id, dest)
