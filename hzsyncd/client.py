"""The SOAP client: the only importer of zeep; a failure on the wire becomes TransportFailure."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import simplejson
import zeep
import zeep.exceptions
from lxml import etree

from hzsyncd.errors import TransportFailure
from hzsyncd.outcomes import Reply, classify_reply

log = logging.getLogger(__name__)


class CachingTransport(zeep.Transport):
    """Loads WSDL and XSD live, keeping a copy so that a restart works while the service is down.

    zeep's own caches expire and then fail with the service; this one prefers the live document
    and falls back to the last copy only when the live one cannot be had.
    """

    def __init__(self, cache_dir: Path | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.cache_dir = cache_dir

    def _cache_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".xml")

    def load(self, url: str) -> bytes:
        if urlparse(url).scheme not in ("http", "https"):
            return bytes(super().load(url))
        cached = self._cache_path(url)
        try:
            content = bytes(self._load_remote_data(url))
        except (requests.RequestException, zeep.exceptions.TransportError) as exc:
            if cached is not None and cached.exists():
                log.warning("%s unreachable (%s); using the saved copy %s", url, exc, cached)
                return cached.read_bytes()
            raise
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Unique per thread: several worker threads load the WSDL at the same time.
            tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, cached)
        return content


@contextmanager
def _transport_failures(what: str) -> Iterator[None]:
    """Translate whatever requests, zeep and lxml raise for a failed exchange."""
    try:
        yield
    except requests.Timeout as exc:
        raise TransportFailure(f"{what}: timed out") from exc
    except requests.ConnectionError as exc:
        raise TransportFailure(f"{what}: cannot connect ({_root_cause(exc)})") from exc
    except requests.RequestException as exc:
        raise TransportFailure(f"{what}: {exc}") from exc
    except zeep.exceptions.Fault as exc:
        raise TransportFailure(f"{what}: SOAP fault: {exc.message}") from exc
    except zeep.exceptions.TransportError as exc:
        raise TransportFailure(f"{what}: HTTP {exc.status_code}") from exc
    except (zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError, etree.LxmlError) as exc:
        raise TransportFailure(f"{what}: unparsable reply ({exc})") from exc
    except zeep.exceptions.Error as exc:
        raise TransportFailure(f"{what}: {exc}") from exc


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Name or service not known"):
        if marker in text:
            return marker.lower()
    return text.split(": ")[-1][:120] or type(exc).__name__


class ReportClient:
    """ReportService over SOAP, from a WSDL URL or file, in either dialect (rpc or document).

    The WSDL is loaded on first use, so constructing a client never touches the network.
    """

    def __init__(
        self,
        wsdl: str,
        *,
        timeout: float,
        cache_dir: Path | None = None,
        endpoint: str | None = None,
    ):
        self.wsdl = wsdl
        self.timeout = timeout
        self.cache_dir = cache_dir
        self.endpoint = endpoint or None
        # One zeep client per thread: requests sessions are not meant to be shared by threads.
        self._local = threading.local()

    def _proxy(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            transport = CachingTransport(
                self.cache_dir, timeout=self.timeout, operation_timeout=self.timeout
            )
            with _transport_failures(f"loading WSDL {self.wsdl}"):
                client = zeep.Client(self.wsdl, transport=transport)
                if self.endpoint:
                    binding = next(iter(client.wsdl.bindings))
                    service = client.create_service(binding, self.endpoint)
                else:
                    service = client.service
            self._local.service = service
        return service

    def load(self) -> None:
        """Load the WSDL now (for `check` and daemon start-up)."""
        self._proxy()

    def call(self, method: str, record_json: str, area_code: str) -> tuple[Reply, float]:
        """Send one record; returns the classified reply and the call's duration in ms.

        Raises TransportFailure when no answer came back.
        """
        operation = getattr(self._proxy(), method)
        started = time.perf_counter()
        with _transport_failures(method):
            text = operation(json=record_json, areaCode=area_code)
        elapsed = (time.perf_counter() - started) * 1000
        if text is not None and not isinstance(text, str):
            raise TransportFailure(f"{method}: unexpected reply type {type(text).__name__}")
        return classify_reply(text), elapsed

    def add_ip(self, user_id: str, password: str, ip: str) -> int:
        with _transport_failures("addIP"):
            return int(self._proxy().addIP(userId=user_id, password=password, IP=ip))

    def del_ip(self, user_id: str, password: str, ips: list[str]) -> int:
        with _transport_failures("delIP"):
            return int(self._proxy().delIP(userId=user_id, password=password, IPCsv=",".join(ips)))

    def get_ip(self, user_id: str, password: str) -> list[str] | int:
        """The allow-list, or the service's negative code when the account is refused."""
        with _transport_failures("getIP"):
            text = self._proxy().getIP(userId=user_id, password=password)
        text = (text or "").strip()
        try:
            parsed = simplejson.loads(text) if text else []
        except ValueError as exc:
            raise TransportFailure(f"getIP: unexpected reply {text[:200]!r}") from exc
        if isinstance(parsed, int):
            return parsed
        if not isinstance(parsed, list):
            raise TransportFailure(f"getIP: unexpected reply {text[:200]!r}")
        return [str(ip) for ip in parsed]
