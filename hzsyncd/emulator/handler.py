"""The emulator's HTTP: WSDL on GET, SOAP calls on POST, receipts and injected failures."""

from __future__ import annotations

import logging
import re
import selectors
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from hzsyncd.emulator import soap
from hzsyncd.emulator.wsdl import schema_for, wsdl_for
from hzsyncd.tables import ACCOUNT_METHODS, DATA_METHODS

if TYPE_CHECKING:
    from hzsyncd.emulator.server import Emulator

logger = logging.getLogger(__name__)

PATH = "/services/ReportService"
SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
STALL_SECONDS = 60.0
# An idle keep-alive connection is dropped after this long, as Tomcat does (there: 20 s).
IDLE_SECONDS = 60.0
_HOST_HEADER = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
_ERROR_PAGE = (
    '<!doctype html><html lang="en"><head><title>HTTP Status {0}</title></head>'
    '<body><h1>HTTP Status {0}</h1><hr class="line" /><h3>Apache Tomcat</h3></body></html>'
)


class Server(ThreadingHTTPServer):
    """A thread per connection, HTTP/1.1 keep-alive, and a way to cut all connections at stop."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.address_family = socket.AF_INET6 if ":" in emulator.host else socket.AF_INET
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__((emulator.host, emulator.port), Handler)

    def serve(self) -> None:
        """Accept connections until `wake()`.

        Unlike `serve_forever`, which polls for shutdown, this sleeps until a connection or the
        wake-up arrives: an idle emulator costs nothing, and stop takes no polling interval.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                self.handle_request()

    def wake(self) -> None:
        """Make `serve()` return."""
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the accepting thread, so that a connection accepted just before
        # serve() returned is known to drop_connections() even if its handler has not run yet.
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, so that no pooled keep-alive connection outlives stop()."""
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed: %r", client_address, sys.exc_info()[1])


class Handler(BaseHTTPRequestHandler):
    """One connection: serves requests until the client closes it, or it idles, or stop()."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle and the client's delayed ACK
    # cost 40 ms per call.
    disable_nagle_algorithm = True
    server_version = "hzsyncd-emulator"
    sys_version = ""
    timeout = IDLE_SECONDS
    server: Server

    def version_string(self) -> str:
        return self.server_version

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path != PATH:
            return self._page(404)
        query = query.lower()
        base = self._base_url()
        if query == "wsdl":
            self._send(200, wsdl_for(self.emulator.style, base))
        elif query == "xsd=1" and (schema := schema_for(self.emulator.style)) is not None:
            self._send(200, schema)
        elif query == "":
            page = f"<h1>{self.emulator.style} ReportService</h1><p>WSDL: {base}?wsdl</p>"
            self._send(200, page.encode(), "text/html;charset=utf-8")
        else:
            self._page(404)

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            return self._page(400)
        if body is None:
            return
        if self.path.partition("?")[0] != PATH:
            return self._page(404)
        style = self.emulator.style
        try:
            request = soap.parse_request(body, style)
        except soap.BadRequest as exc:
            return self._send(500, soap.fault(style, True, str(exc)))
        try:
            if request.operation in DATA_METHODS:
                self._data_call(request)
            elif request.operation in ACCOUNT_METHODS:
                self._account_call(request)
            elif style == "rpc":
                self._send(500, soap.fault(style, True, f"No such operation '{request.operation}'"))
            else:
                name = f"{{{request.namespace or ''}}}{request.operation}"
                self._send(500, soap.fault(style, True, f"Cannot find dispatch method for {name}"))
        except Exception as exc:
            # A bug in the emulator must look like a server error to the client, not a hang.
            logger.exception("emulator failed on %s", request.operation)
            self._send(500, soap.fault(style, False, f"{type(exc).__name__}: {exc}"))

    def _data_call(self, request: soap.Request) -> None:
        emulator = self.emulator
        params = request.params
        receipt: dict[str, Any] = {
            "method": request.operation,
            "areaCode": params.get("areaCode"),
            "json": params.get("json"),
            "remote": self._remote(),
        }
        mode = emulator.next_fault()
        emulator.pause(emulator.latency_ms / 1000)
        if mode is not None:
            emulator.record({**receipt, "response": None, "fault": mode})
            return self._inject(mode)
        answer = emulator.service.call(
            request.operation, params.get("json"), params.get("areaCode"), receipt["remote"]
        )
        emulator.record({**receipt, "response": answer})
        self._send(200, soap.reply(emulator.style, request, answer))

    def _account_call(self, request: soap.Request) -> None:
        service, params = self.emulator.service, request.params
        user_id, password = params.get("userId"), params.get("password")
        receipt: dict[str, Any] = {"method": request.operation, "userId": user_id}
        answer: str | int
        if request.operation == "addIP":
            receipt["IP"] = params.get("IP")
            answer = service.add_ip(user_id, password, params.get("IP"))
        elif request.operation == "delIP":
            receipt["IPCsv"] = params.get("IPCsv")
            answer = service.del_ip(user_id, password, params.get("IPCsv"))
        else:
            answer = service.get_ip(user_id, password)
        self.emulator.record({**receipt, "remote": self._remote(), "response": answer})
        self._send(200, soap.reply(self.emulator.style, request, answer))

    def _inject(self, mode: str) -> None:
        if mode in ("http500", "http503"):
            status = 500 if mode == "http500" else 503
            self._page(status)
        elif mode == "fault":
            self._send(500, soap.fault(self.emulator.style, False, soap.CONCURRENT_MODIFICATION))
        elif mode == "garbage":
            self._send(200, b"\x00\x17 this is not XML: <<<&&&>>>\xff\xfe")
        else:
            # "stall" and "reset": no answer at all, the call is not processed.
            if mode == "stall":
                self.emulator.pause(STALL_SECONDS)
            else:
                # A zero linger turns the close into a reset (RST), as a crashed server gives.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.close_connection = True
            self.connection.close()

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._page(411)
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass  # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _page(self, status: int) -> None:
        self._send(status, _ERROR_PAGE.format(status).encode(), "text/html;charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str = SOAP_CONTENT_TYPE) -> None:
        if self.emulator.stopping:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _remote(self) -> str:
        address = str(self.client_address[0])
        # A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
        return address.removeprefix("::ffff:")

    def _base_url(self) -> str:
        # Like Axis and JAX-WS, publish the address the client used, so that a WSDL fetched
        # through "localhost" or a forwarded port points back the same way.
        host = self.headers.get("Host", "")
        if _HOST_HEADER.fullmatch(host):
            return f"http://{host}{PATH}"
        return self.emulator.url
