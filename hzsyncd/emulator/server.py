"""The emulator's life cycle and test hooks: start, stop, receipts, injected failures."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from hzsyncd.emulator.handler import PATH, Server
from hzsyncd.emulator.service import Account, ReportService
from hzsyncd.emulator.wsdl import STYLES

FAULT_MODES = ("http500", "http503", "reset", "stall", "garbage", "fault")


class Emulator:
    """A local ReportService over real HTTP, in Axis rpc/encoded or JAX-WS document style.

        with Emulator(style="document", allow=["127.0.0.1"]) as emu:
            zeep.Client(emu.wsdl_url).service.reportFlatInfo(json="{...}", areaCode="320000")

    `accounts` defaults to `demo:demo:320000`; `allow` is the initial allow-list of every account
    (empty: data calls are refused until addIP); `receipts` names a file that gets one NDJSON
    line per call; `area_codes` adds to the built-in area code table; `port=0` picks a free
    port (`url` tells which once started). `latency_ms` delays every data call, `fail_every=N`
    answers every Nth data call with HTTP 500; both may be changed while serving, and
    `set_fault` injects the other failures.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        style: str = "rpc",
        accounts: Iterable[Account] | None = None,
        allow: Iterable[str] = (),
        receipts: Path | str | None = None,
        latency_ms: float = 0,
        fail_every: int = 0,
        area_codes: Iterable[str] | None = None,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
        self.host = host
        self.port = port
        self.style = style
        if accounts is None:
            accounts = [Account("demo", "demo", "320000")]
        self.service = ReportService(accounts, allow, area_codes or ())
        self.latency_ms = latency_ms
        self.fail_every = fail_every
        self.receipts_path = Path(receipts) if receipts is not None else None
        self._lock = threading.Lock()
        self._receipts: list[dict[str, Any]] = []
        self._receipts_file: TextIO | None = None
        self._fault: str | None = None
        self._data_calls = 0
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._life_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The service address, e.g. `http://127.0.0.1:8080/services/ReportService`."""
        port = self._server.server_address[1] if self._server else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}{PATH}"

    @property
    def wsdl_url(self) -> str:
        return f"{self.url}?wsdl"

    def start(self) -> None:
        """Listen and serve from a background thread; returns once connections are accepted.

        Raises OSError when the address is taken or the receipts file cannot be opened.
        """
        with self._life_lock:
            if self._server is not None or self._stopping.is_set():
                raise RuntimeError("an Emulator starts once")
            server = Server(self)  # bound and listening: connections queue from here on
            try:
                if self.receipts_path is not None:
                    self._receipts_file = self.receipts_path.open("a", encoding="utf-8")
            except OSError:
                server.server_close()
                raise
            self._server = server
            self._thread = threading.Thread(
                target=server.serve, name=f"emulator:{server.server_address[1]}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving, drop open connections and close the socket; safe to call twice."""
        self._stopping.set()
        with self._life_lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
            if server is not None and thread is not None:
                self.port = server.server_address[1]
                server.wake()
                thread.join()
                server.drop_connections()
                # Joins the handler threads, which the dropped connections and _stopping release.
                server.server_close()
        with self._lock:
            if self._receipts_file is not None:
                self._receipts_file.close()
                self._receipts_file = None

    def serve_forever(self) -> None:
        """Serve until KeyboardInterrupt, SIGTERM or `stop()` from another thread."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if self._server is None:
                self.start()
            # A timed wait, because a signal does not interrupt an untimed one everywhere.
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_fault(self, mode: str | None) -> None:
        """Answer every data call from now on with failure `mode` (one of FAULT_MODES), or not."""
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)} or None")
        with self._lock:
            self._fault = mode

    def receipts(self) -> list[dict[str, Any]]:
        """Every call so far, oldest first, as written to the receipts file."""
        with self._lock:
            return [dict(r) for r in self._receipts]

    # -- for the request handler ---------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def next_fault(self) -> str | None:
        """Count one data call; the failure to answer it with, if any."""
        with self._lock:
            self._data_calls += 1
            if self._fault is None and self.fail_every > 0:
                if self._data_calls % self.fail_every == 0:
                    return "http500"
            return self._fault

    def record(self, receipt: dict[str, Any]) -> None:
        """Keep and write one receipt, stamped with the time."""
        receipt["time"] = time.time()
        with self._lock:
            self._receipts.append(receipt)
            if self._receipts_file is not None:
                self._receipts_file.write(json.dumps(receipt, ensure_ascii=False) + "\n")
                self._receipts_file.flush()

    def pause(self, seconds: float) -> None:
        """Sleep, cut short by stop()."""
        if seconds > 0:
            self._stopping.wait(seconds)
