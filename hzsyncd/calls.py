"""Calls in flight: worker threads that run SOAP calls, with per-key order and a rate limit.

Only the workers touch the network; everything else (ledger, files) stays on the caller's
thread. Workers are daemon threads so that a stopping daemon can abandon a call stuck in a
timeout: its record is still `sending` in the ledger and is sent again after a restart.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from hzsyncd.client import ReportClient
from hzsyncd.outcomes import Reply


@dataclass
class Call:
    key: Hashable
    method: str
    payload: str
    area_code: str
    context: Any
    reply: tuple[Reply, float] | None = None
    error: BaseException | None = None

    def result(self) -> tuple[Reply, float]:
        """The reply and the call's duration in ms; raises what the call raised."""
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class CallPool:
    """At most `size` calls at once; a key's next call waits until its last one is collected.

    Finished calls come back through one queue, so collecting costs one hand-over per call.
    With `size` 1 there is nothing to overlap: the call runs on the caller's thread, sparing
    the hand-over and the contest for the GIL with a worker; `calling` tells a signal handler
    that it may interrupt it.
    """

    def __init__(
        self,
        client: ReportClient,
        size: int,
        rate_limit: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.size = size
        self.interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self.clock = clock
        self._next_slot = 0.0
        self._jobs: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self._in_flight: dict[Hashable, Call] = {}
        self.calling = False
        self._workers = [
            threading.Thread(target=self._work, name=f"hzsyncd-call-{n}", daemon=True)
            for n in range(size if size > 1 else 0)
        ]
        for worker in self._workers:
            worker.start()

    def _work(self) -> None:
        while (call := self._jobs.get()) is not None:
            self._run(call)

    def _run(self, call: Call) -> None:
        try:
            call.reply = self.client.call(call.method, call.payload, call.area_code)
        except Exception as exc:  # handed to the collecting thread, which decides
            call.error = exc
        self._done.put(call)

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        return len(self._in_flight) >= self.size

    def in_flight(self, key: Hashable) -> Call | None:
        return self._in_flight.get(key)

    def submit(
        self, key: Hashable, method: str, payload: str, area_code: str, context: Any
    ) -> Call:
        if key in self._in_flight:
            raise RuntimeError(f"a call for {key!r} is still in flight")
        if self.interval:
            now = self.clock()
            if self._next_slot > now:
                time.sleep(self._next_slot - now)
            self._next_slot = max(now, self._next_slot) + self.interval
        call = Call(key, method, payload, area_code, context)
        self._in_flight[key] = call
        if self._workers:
            self._jobs.put(call)
            return call
        self.calling = True
        try:
            self._run(call)
        finally:
            self.calling = False
        return call

    def completed(self, timeout: float | None = 0.0, *, only: Call | None = None) -> list[Call]:
        """Collect finished calls, waiting up to `timeout` (None: for ever) for the first one,
        or, with `only`, until that call is back. Returns [] when the time ran out."""
        if not self._in_flight:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        finished: list[Call] = []
        while only is None or only not in finished:
            if finished and only is None:
                wait: float | None = 0.0
            elif deadline is None:
                wait = None
            else:
                wait = max(0.0, deadline - time.monotonic())
            try:
                call = (
                    self._done.get(block=wait != 0.0, timeout=wait)
                    if wait != 0.0
                    else (self._done.get_nowait())
                )
            except queue.Empty:
                break
            del self._in_flight[call.key]
            finished.append(call)
        return finished

    def close(self) -> None:
        """Let the workers end once their current call returns; do not wait for them."""
        for _ in self._workers:
            self._jobs.put(None)
