"""One record: the duplicate rule, the call, and its outcome recorded in the ledger."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import simplejson

from hzsyncd.batch import DUPLICATE, BatchStates
from hzsyncd.calls import Call, CallPool
from hzsyncd.config import Config
from hzsyncd.errors import InputError, Interrupted, IpDenied, ServiceError, TransportFailure
from hzsyncd.ledger import Decision, Ledger
from hzsyncd.logs import event
from hzsyncd.outcomes import INVALID_CODE, Outcome, Reply
from hzsyncd.reader import BadRecord, Record
from hzsyncd.tables import MissingKey
from hzsyncd.work import Work

HEARTBEAT_SECONDS = 1.0


class RecordSender:
    """Decides, sends and records single records, up to max_in_flight calls at once.

    Replies are recorded on the caller's thread, the only one that writes the ledger. After a
    transport failure or an IP refusal no new call starts; `checkpoint()` waits for the calls
    in flight and raises it, with every record that did not go through back to `pending`.
    """

    def __init__(self, config: Config, ledger: Ledger, pool: CallPool, clock: Callable[[], float]):
        self.config = config
        self.ledger = ledger
        self.pool = pool
        self.clock = clock
        self.failure: ServiceError | None = None
        # Called while waiting for calls; True means stop (the daemon's tick).
        self.heartbeat: Callable[[], bool] | None = None
        # Calls answered "accepted" so far: how the daemon tells that sending has resumed.
        self.accepted_calls = 0
        self.batch = BatchStates(ledger)

    def prefetch(self, work: Work, items: list[Record | BadRecord]) -> None:
        """Read the ledger's state of a batch of records' keys before deciding them."""
        table = self.config.tables[work.folder.table.name]
        self.batch.load(table, work.folder.op.value, items)

    def flush(self) -> None:
        """Write the duplicates the batch's fast path found."""
        self.batch.flush()

    def checkpoint(self) -> None:
        """Raise the first service failure met, once every call in flight has come back."""
        if self.failure is not None:
            self.drain()
            failure, self.failure = self.failure, None
            raise failure

    def _await(self, only: Call | None = None) -> None:
        """Record calls as they come back until one has (or `only` has), feeding the heartbeat
        meanwhile: a call may take [service] timeout, longer than the watchdog or a stop may
        wait. Whatever else comes back in the meantime is recorded too."""
        while True:
            finished = self.pool.completed(HEARTBEAT_SECONDS, only=only)
            self._collect(finished)
            if finished and (only is None or only in finished):
                return
            if self.heartbeat is not None and self.heartbeat():
                raise Interrupted("stopped while calls were out")

    def drain(self, timeout: float | None = None) -> bool:
        """Record every call in flight; False when `timeout` ran out first (calls abandoned)."""
        if timeout is None:
            while len(self.pool):
                self._await()
            return True
        deadline = time.monotonic() + timeout
        while len(self.pool):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            finished = self.pool.completed(left)
            if not finished:
                return False
            self._collect(finished)
        return True

    def first_time(self, work: Work, item: Record | BadRecord) -> None:
        key = self.batch.key(item)
        known = None
        if key is not None and isinstance(item, Record):
            known = self.batch.decide(work, item, key, self.pool)
            if known is DUPLICATE:
                return
        if isinstance(item, BadRecord):
            self._refuse(work, item, item.reason, item.field, item.text)
            return
        if key is None:
            try:
                key = self.config.tables[work.folder.table.name].key_of(item.data)
            except MissingKey as exc:
                self._refuse(work, item, str(exc), exc.field, item.payload)
                return
        # Once a key is sent or decided here, the states read in advance say nothing of it.
        self.batch.touch(key)
        self._decide_and_send(work, None, key, item, known=known)

    @staticmethod
    def _place(work: Work, item: Record | BadRecord) -> dict[str, Any]:
        """The columns that say where a record comes from, for a row written field by field."""
        return dict(
            file_id=work.file_id,
            idx=item.index,
            line=item.line,
            table_name=work.folder.table.name,
            op=work.folder.op.value,
        )

    def _refuse(
        self, work: Work, item: Record | BadRecord, reason: str, field: str | None, text: str
    ) -> None:
        self.ledger.add_record(
            **self._place(work, item),
            state="final",
            outcome=Outcome.REJECTED.value,
            code=INVALID_CODE,
            messages=[reason],
            field=field,
            payload=text,
        )
        event(
            logging.WARNING,
            f"line {item.line}: {reason}",
            table=work.folder.table.name,
            op=work.folder.op.value,
            file=work.name,
            outcome=Outcome.REJECTED.value,
            code=INVALID_CODE,
        )

    def retry(
        self, work: Work, row: dict[str, Any], item: Record | BadRecord, *, force: bool
    ) -> None:
        if row["state"] == "deferred" and not force and (row["next_at"] or 0) > self.clock():
            return
        if isinstance(item, BadRecord) or row["hash"] != item.digest:
            # The ledger's identity check guarantees the same content; this is a safety net.
            raise InputError(work.work, "content differs from the ledger's record", item.line)
        self._decide_and_send(work, int(row["id"]), str(row["key"]), item, row)

    def _decide_and_send(
        self,
        work: Work,
        record_id: int | None,
        key: str,
        item: Record,
        row: dict[str, Any] | None = None,
        known: Decision | None = None,
    ) -> None:
        """Decide and act; a record met for the first time (`record_id` None) gets its ledger
        row written once, with the decision in it: a re-dropped file costs one insert a record."""
        table_name = work.folder.table.name
        op = work.folder.op.value
        earlier = self.pool.in_flight((table_name, key))
        if earlier is not None:
            # The outcome of the key's version in flight decides what this version needs.
            self._await(only=earlier)
        decision = known or self.ledger.decide(table_name, key, op, item.digest, record_id)
        if decision.action == "duplicate":
            if record_id is None:
                self.ledger.add_duplicates(
                    [
                        (
                            work.file_id,
                            item.index,
                            item.line,
                            table_name,
                            op,
                            key,
                            item.digest,
                            time.time(),
                        )
                    ]
                )
            else:
                self.ledger.update_record(record_id, state="final", outcome=Outcome.DUPLICATE.value)
            return
        if record_id is None:
            # Written as `sending` at once when it is about to be sent: one statement less.
            if decision.action == "send" and self.failure is None:
                record_id = self.ledger.add_sending(
                    work.file_id, item.index, item.line, table_name, op, key, item.digest
                )
                self._submit(work, record_id, key, item, row)
                return
            record_id = self.ledger.add_record(
                **self._place(work, item), key=key, hash=item.digest, state="pending"
            )
        if decision.action == "rejected" and decision.previous is not None:
            prev = decision.previous
            self.ledger.update_record(
                record_id,
                state="final",
                outcome=Outcome.REJECTED.value,
                code=prev["code"],
                messages=prev["messages"],
                response=prev["response"],
                payload=item.payload,
            )
            self._log_rejection(work, key, item.line, prev["code"], prev["messages"], again=True)
            return
        if decision.action == "wait":
            self.ledger.update_record(
                record_id,
                state="deferred",
                next_at=self.clock() + self.config.retry.backoff_initial,
                code="waiting",
                messages=["an earlier version of this key is not final yet"],
            )
            return
        self._send(work, record_id, key, item, row)

    def _send(
        self, work: Work, record_id: int, key: str, item: Record, row: dict[str, Any] | None
    ) -> None:
        if self.failure is not None:
            return  # the record stays pending; checkpoint() raises the failure
        self.ledger.mark_sending(record_id)
        self._submit(work, record_id, key, item, row)

    def _submit(
        self, work: Work, record_id: int, key: str, item: Record, row: dict[str, Any] | None
    ) -> None:
        # The sending mark is committed before the call (DESIGN §4); the same commit carries
        # the outcomes recorded since the last one, so a record costs one commit, not two.
        # It is committed while the calls before it are still out: reading, deciding and
        # committing overlap the wire, and only recording a reply lies between two calls.
        self.ledger.commit()
        if self.pool.full:
            self._await()
            # What came back is committed before another call starts: a crash then repeats
            # at most the max_in_flight calls out, never one already answered as well.
            self.ledger.commit()
        if self.failure is not None:
            # Marked but never sent: back to pending, for the next attempt.
            self.ledger.update_record(record_id, state="pending")
            return
        table = work.folder.table
        self.pool.submit(
            (table.name, key),
            table.method(work.folder.op),
            item.payload,
            self.config.area_codes[table.name],
            (work, record_id, key, item, row),
        )
        self._collect(self.pool.completed(0.0))

    def _collect(self, calls: list[Call]) -> None:
        for call in calls:
            work, record_id, key, item, row = call.context
            try:
                reply, elapsed = call.result()
            except TransportFailure as exc:
                self.ledger.update_record(record_id, state="pending")
                self.ledger.add_attempt(record_id, Outcome.TRANSPORT.value, None, str(exc), 0.0)
                self.ledger.commit()
                self.failure = self.failure or exc
                continue
            self._record_reply(work, record_id, key, item, reply, elapsed, row)

    def _record_reply(
        self,
        work: Work,
        record_id: int,
        key: str,
        item: Record,
        reply: Reply,
        elapsed: float,
        row: dict[str, Any] | None,
    ) -> None:
        table_name = work.folder.table.name
        op = work.folder.op.value
        if self._lost_delete_replayed(table_name, key, op, reply, row):
            # The call before a crash deleted the key and its reply was lost: the delete is
            # done, as DESIGN §4 (deletes are idempotent) has it.
            reply = Reply(Outcome.OK, raw=reply.raw)
        if reply.outcome is not Outcome.OK or (row is not None and row["attempts"]):
            # A first call that succeeds is told whole by the record's own row; attempts keep
            # the story of records that needed more than one.
            self.ledger.add_attempt(record_id, reply.outcome.value, reply.code, reply.raw, elapsed)
        if reply.outcome is Outcome.OK:
            self.accepted_calls += 1
            self.ledger.accept(
                record_id, table_name, key, op, item.digest, response=reply.raw, duration_ms=elapsed
            )
            event(
                logging.DEBUG,
                "accepted",
                table=table_name,
                op=op,
                file=work.name,
                key=key,
                outcome="ok",
            )
            return
        common = dict(code=reply.code, messages=list(reply.messages), response=reply.raw)
        if reply.outcome is Outcome.IP_DENIED:
            self.ledger.update_record(record_id, state="pending", **common)
            self.failure = self.failure or IpDenied(reply.raw or "IP not allowed")
        elif (
            reply.outcome is Outcome.RELATION
            and reply.retryable
            and not self._relation_expired(row)
        ):
            attempts = int(row["attempts"]) + 1 if row else 1
            delay = min(
                self.config.retry.backoff_initial * 2 ** (attempts - 1),
                self.config.retry.backoff_max,
            )
            now = self.clock()
            since = row["relation_since"] if row and row["relation_since"] else now
            self.ledger.update_record(
                record_id,
                state="deferred",
                outcome=Outcome.RELATION.value,
                next_at=now + delay,
                relation_since=since,
                payload=item.payload,
                **common,
            )
            event(
                logging.INFO,
                f"deferred, retry in {delay:g} s: {reply.raw}",
                table=table_name,
                op=op,
                file=work.name,
                key=key,
                outcome=Outcome.RELATION.value,
                code=reply.code,
            )
        else:
            self.ledger.update_record(
                record_id,
                state="final",
                outcome=Outcome.REJECTED.value,
                payload=item.payload,
                duration_ms=elapsed,
                **common,
            )
            self._log_rejection(work, key, item.line, reply.code, reply.messages)
        # Not committed here: the next sending mark or the end of the file commits it. Until
        # then the record reads `sending`, and a crash sends it again (idempotent, DESIGN §4).

    def _lost_delete_replayed(
        self, table: str, key: str, op: str, reply: Reply, row: dict[str, Any] | None
    ) -> bool:
        """A delete resent after a crash (its row still `sending`), answered with a missing
        relation ("not stored": error-3001 from the emulator; the real code is unknown, so
        any error-NNNN counts), of a key whose last accepted operation was a report: the call
        whose reply the crash lost has deleted it."""
        if op != "delete" or reply.outcome is not Outcome.RELATION:
            return False
        if row is None or row["state"] != "sending":
            return False
        current = self.ledger.current(table, key)
        return current is not None and current["op"] == "report"

    def _relation_expired(self, row: dict[str, Any] | None) -> bool:
        if row is None or not row["relation_since"]:
            return False
        limit = self.config.retry.relation_retry_hours * 3600
        return bool(self.clock() - float(row["relation_since"]) >= limit)

    def _log_rejection(
        self, work: Work, key: str, line: int, code: str | None, messages: Any, again: bool = False
    ) -> None:
        if isinstance(messages, str):
            try:
                messages = simplejson.loads(messages)
            except ValueError:
                messages = [messages]
        text = "; ".join(str(m) for m in messages or [])
        prefix = "rejected before, not resent" if again else "rejected"
        event(
            logging.WARNING,
            f"line {line}: {prefix}: {text}",
            table=work.folder.table.name,
            op=work.folder.op.value,
            file=work.name,
            key=key,
            outcome=Outcome.REJECTED.value,
            code=code,
        )
