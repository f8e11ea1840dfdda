"""The daemon's main loop: watched files → pipeline, pauses and backoff, signals, one owner."""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from hzsyncd import logs
from hzsyncd import spool as spool_mod
from hzsyncd.config import Config, find_config, load_config
from hzsyncd.disposal import refuse
from hzsyncd.errors import ConfigError, InputError, Interrupted, IpDenied, TransportFailure
from hzsyncd.ledger import Ledger
from hzsyncd.lock import owner_lock
from hzsyncd.logs import event
from hzsyncd.notify import Notifier
from hzsyncd.pipeline import Pipeline
from hzsyncd.session import Session, make_client, open_ledger, recover
from hzsyncd.spool import DropFolder, Spool
from hzsyncd.watch import Candidate, Watcher
from hzsyncd.work import Work

# The longest the loop sleeps: how soon it notices a signal, a due retry or the watchdog.
TICK_SECONDS = 0.5


@dataclass
class Waiting:
    """A claimed file to be processed again at `due` (deferred records, an outage)."""

    work: Work
    due: float

    def order(self) -> tuple[int, int, str]:
        return (self.work.folder.table.rank, self.work.identity[3], self.work.name)


class Daemon:
    """`hzsyncd run`: watch every drop folder and report what is dropped, until stopped."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ):
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.spool = Spool(config.spool.root, config.tables)
        self.waiting: dict[int, Waiting] = {}
        self.candidates: list[Candidate] = []
        self.paused_until = 0.0
        self.pause: str | None = None  # why sending is paused: "ip" or "transport"
        self.failures = 0
        self._accepted_at_pause = 0
        self._stop = False
        self._reload = False
        self._status = ""
        self._next_prune = 0.0

    # Life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        with owner_lock(self.config.spool.root, self.config.ledger.path):
            self.spool.init()
            self.ledger: Ledger = open_ledger(self.config, self.spool)
            try:
                self.pipeline = self._pipeline(self.config)
                recover(self._session(), put_back=False)
                self._resume_claimed()
                self.watcher = self._watcher(self.config)
                self.watcher.start()
                try:
                    self._record_state()
                    self.notifier.ready(self._set_status())
                    event(
                        logging.INFO,
                        f"watching {self.spool.root} "
                        f"({self.watcher.observer_kind}); {len(self.waiting)} file(s) resumed",
                    )
                    self._loop()
                finally:
                    self.notifier.stopping()
                    self._record_state("stopped")
                    self.watcher.stop()
                    self.pipeline.close()
            finally:
                self.ledger.close()
        event(logging.INFO, "stopped")
        return 0

    def stop(self) -> None:
        """Ask the loop to stop, as SIGTERM does (for a daemon run in a thread, in tests)."""
        self._stop = True

    def request_reload(self) -> None:
        self._reload = True

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # run in a thread (tests): the caller stops it with stop()

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop()
            if self.pipeline.pool.calling:
                # A call on this thread (max_in_flight 1) may wait [service] timeout: abandon
                # it now. Its record is `sending` in the ledger and is sent again at restart.
                raise Interrupted("stopped during a call")

        def reload(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        # `kill -USR1` prints every thread's stack to stderr (the journal): for a daemon that
        # looks stuck, what it is doing, without stopping it.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _pipeline(self, config: Config) -> Pipeline:
        return Pipeline(config, self.ledger, make_client(config), self.clock)

    def _watcher(self, config: Config) -> Watcher:
        return Watcher(
            self.spool,
            settle_seconds=config.spool.settle_seconds,
            rescan_seconds=config.spool.rescan_seconds,
            observer=config.spool.observer,
        )

    def _session(self) -> Session:
        return Session(self.config, self.spool, self.ledger, self.pipeline.client, self.pipeline)

    def _resume_claimed(self) -> None:
        for row in self.ledger.open_files():
            folder = self._folder(Path(row["drop_dir"]))
            if row["state"] != "claimed" or folder is None or not row["work_path"]:
                continue
            work = self.pipeline.resume(row, folder)
            # Deferred records keep the schedule the ledger holds for them across a restart.
            self.waiting[work.file_id] = Waiting(work, self._file_due(work.file_id))

    def _folder(self, drop_dir: Path) -> DropFolder | None:
        return next((f for f in self.spool.drop_folders() if f.path == drop_dir), None)

    # The loop ------------------------------------------------------------------------------

    def _prune(self) -> None:
        """Once a day, history older than [ledger] history_days goes (0 keeps it)."""
        days = self.config.ledger.history_days
        if days <= 0 or self.clock() < self._next_prune:
            return
        dropped = self.ledger.prune(days, self.clock())
        self._next_prune = self.clock() + 86400
        event(logging.INFO, f"history older than {days} days pruned ({dropped} attempts)")

    def _loop(self) -> None:
        while not self._stop:
            self.notifier.watchdog()
            self._prune()
            if self._reload:
                self._reload = False
                self.reload()
            self._refuse_unusable()
            self.candidates.extend(self.watcher.ready())
            now = self.clock()
            if self.pause and now < self.paused_until:
                self.watcher.wait(min(TICK_SECONDS, self.paused_until - now))
                continue
            job = self._next_job(now)
            if job is None:
                self.notifier.status(self._set_status())
                self.watcher.wait(min(TICK_SECONDS, max(0.0, self._next_due() - now)))
                continue
            self._run(job)

    def _next_due(self) -> float:
        return min((w.due for w in self.waiting.values()), default=float("inf"))

    def _next_job(self, now: float) -> Candidate | Waiting | None:
        due = [w for w in self.waiting.values() if w.due <= now]
        jobs: list[tuple[tuple[int, int, str], Candidate | Waiting]] = [
            ((c.rank, c.mtime_ns, c.name), c) for c in self.candidates if not self._older_sibling(c)
        ] + [(w.order(), w) for w in due]
        if not jobs:
            return None
        _, job = min(jobs, key=lambda pair: pair[0])
        if isinstance(job, Candidate):
            self.candidates.remove(job)
        return job

    def _older_sibling(self, candidate: Candidate) -> bool:
        """Whether the table's other drop folder (report or delete) holds an older file not yet
        taken: a table's two folders are one queue in (mtime, name) order (DESIGN §2), so a
        delete never overtakes the report before it while that one is still settling."""
        folder = candidate.folder
        other = next(
            (f for f in self.spool.drop_folders() if f.table == folder.table and f != folder),
            None,
        )
        if other is None:
            return False
        try:
            entries = list(os.scandir(other.path))
        except OSError:
            return False
        for entry in entries:
            if spool_mod.name_kind(entry.name) != "accept" or not entry.is_file(
                follow_symlinks=False
            ):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            if (mtime, entry.name) < (candidate.mtime_ns, candidate.name):
                return True
        return False

    def _run(self, job: Candidate | Waiting) -> None:
        if isinstance(job, Candidate):
            self.watcher.forget(job.path)
            if not job.path.exists():
                return
            try:
                work = self.pipeline.claim(job.path, job.folder)
            except InputError as exc:
                refuse(job.path, job.folder, exc.reason)
                return
        else:
            work = job.work
        self.notifier.status(self._set_status(f"sending {work.folder.table.name}/{work.name}"))
        try:
            report = self.pipeline.process(work, tick=self._tick)
        except IpDenied as exc:
            self._pause_for_ip(str(exc))
            self.waiting[work.file_id] = Waiting(work, self.paused_until)
            return
        except TransportFailure as exc:
            self._pause_for_outage(str(exc))
            self.waiting[work.file_id] = Waiting(work, self.paused_until)
            return
        except Interrupted:
            event(
                logging.INFO,
                "stopping mid-file; it resumes at the next start",
                table=work.folder.table.name,
                file=work.name,
            )
            return
        self._resumed()
        if report.disposition == "waiting":
            self.waiting[work.file_id] = Waiting(work, self._file_due(work.file_id))
        elif report.disposition == "incomplete":
            self.waiting.pop(work.file_id, None)
            self.pipeline.put_back(work)  # the watcher sees it again when it settles
        else:
            self.waiting.pop(work.file_id, None)

    def _tick(self) -> bool:
        self.notifier.watchdog()
        if (
            self.pause is not None
            and self.pipeline.records.accepted_calls > self._accepted_at_pause
        ):
            self._resumed()  # a call went through: the pause is over, even mid-file
        return self._stop

    def _file_due(self, file_id: int) -> float:
        rows = self.ledger.open_records(file_id)
        return min((float(r["next_at"] or 0.0) for r in rows), default=self.clock())

    # Pauses --------------------------------------------------------------------------------

    def _pause_for_ip(self, message: str) -> None:
        seconds = self.config.retry.ip_retry_seconds
        if self.pause != "ip":
            event(
                logging.ERROR,
                f"this host's IP is not on the allow-list ({message}): all "
                f"sending paused, nothing is marked failed; re-probing every {seconds:g} s. "
                "Fix: hzsyncd ip add <this host's address>",
                outcome="ip_denied",
            )
        if self.pause != "ip":
            self.pause = "ip"
            self._record_state(error=message)
        self._accepted_at_pause = self.pipeline.records.accepted_calls
        self.paused_until = self.clock() + seconds
        self.notifier.status(self._set_status())

    def _pause_for_outage(self, message: str) -> None:
        self.failures += 1
        retry = self.config.retry
        delay = min(retry.backoff_initial * 2 ** (self.failures - 1), retry.backoff_max)
        event(
            logging.WARNING,
            f"service unreachable: {message}; retrying in {delay:g} s "
            f"(attempt {self.failures}); nothing is marked failed",
            outcome="transport",
        )
        if self.pause != "transport":
            self.pause = "transport"
            self._record_state(error=message)
        self._accepted_at_pause = self.pipeline.records.accepted_calls
        self.paused_until = self.clock() + delay
        self.notifier.status(self._set_status())

    def _resumed(self) -> None:
        if self.pause is None:
            return
        if self.pause == "ip":
            event(logging.WARNING, "this host's IP is allowed again: sending resumed")
        elif self.pause == "transport":
            event(
                logging.WARNING,
                f"service reachable again after {self.failures} failed attempt(s): sending resumed",
            )
        self.pause = None
        self.failures = 0
        self._record_state()

    def _record_state(self, status: str | None = None, error: str | None = None) -> None:
        """What `hzsyncd status` shows of the daemon: kept in the ledger, written on changes."""
        state = json.loads(self.ledger.get_meta("daemon_state") or "{}")
        state.update(pid=os.getpid(), status=status or self._set_status(), updated_at=self.clock())
        if error:
            state.update(last_error=error, error_at=self.clock())
        self.ledger.set_meta("daemon_state", json.dumps(state, ensure_ascii=False))

    def _set_status(self, doing: str | None = None) -> str:
        if self.pause == "ip":
            left = max(0.0, self.paused_until - self.clock())
            status = f"paused: IP not on the allow-list; re-probe in {left:.0f} s"
        elif self.pause == "transport":
            status = f"paused: service unreachable ({self.failures} attempts)"
        else:
            status = doing or "idle"
        waiting = len(self.waiting)
        return status + (f"; {waiting} file(s) waiting for retries" if waiting else "")

    # Files the watcher refuses, and reloads ------------------------------------------------

    def _refuse_unusable(self) -> None:
        for path, folder, reason in self.watcher.refused():
            refuse(path, folder, reason)

    def reload(self) -> None:
        """SIGHUP: take a new configuration, or keep the old one if the new one is wrong."""
        try:
            new = load_config(find_config(self.config_path))
        except ConfigError as exc:
            event(logging.ERROR, f"reload refused, the running configuration stays: {exc}")
            return
        if (new.spool.root, new.ledger.path) != (self.config.spool.root, self.config.ledger.path):
            event(
                logging.ERROR,
                "reload refused: [spool] root and [ledger] path change only "
                "with a restart; the running configuration stays",
            )
            return
        self.notifier.reloading()
        self.pipeline.close()
        self.config = new
        self.pipeline = self._pipeline(new)
        self.watcher.stop()
        self.watcher = self._watcher(new)
        self.watcher.start()
        logs.setup(new.log.target, new.log.level)
        event(logging.INFO, "configuration reloaded")
        self.notifier.ready(self._set_status())
