"""The exception tree of hzsyncd; the CLI alone turns these into text and exit codes.

    HzsyncdError
    ├── ConfigError        bad or missing configuration            (exit 2)
    ├── LedgerError        ledger missing, corrupt, locked or unwritable
    ├── SpoolError         spool folders missing or unusable; a move that failed
    ├── Interrupted        the daemon was asked to stop in the middle of a file
    ├── InputError         a whole file cannot be used (carries file, line, field)
    │   └── IncompleteFile the file ends mid-record: still being written, or truncated
    └── ServiceError       the remote service could not be used
        ├── TransportFailure  refused, reset, timeout, HTTP 5xx, SOAP fault, garbage reply (exit 3)
        └── IpDenied          this host's IP is not on the allow-list               (exit 4)

Problems of a single record are not exceptions: the reader yields them as data, so that a bad
record never takes its neighbours down.
"""

from __future__ import annotations

from pathlib import Path


class HzsyncdError(Exception):
    """Base of every error hzsyncd raises on purpose."""


class ConfigError(HzsyncdError):
    """The configuration file or a value in it is wrong; the message lists every problem."""


class LedgerError(HzsyncdError):
    """The ledger cannot be opened, is corrupt or missing, or a commit failed."""


class SpoolError(HzsyncdError):
    """A spool folder is missing or unusable, or a file could not be moved."""


class Interrupted(HzsyncdError):
    """A stop was requested mid-file; the file stays claimed and resumes at the next start."""


class InputError(HzsyncdError):
    """A whole input file is unusable (empty, not JSON, not decodable).

    `line` is 1-based (0 when the problem is not tied to a line); `field` names the JSON field
    when there is one.
    """

    def __init__(self, path: Path | str, reason: str, line: int = 0, field: str | None = None):
        self.path = Path(path)
        self.reason = reason
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path.name}:{self.line}" if self.line else self.path.name
        what = f"{self.field}: {self.reason}" if self.field else self.reason
        return f"{where}: {what}"


class IncompleteFile(InputError):
    """The file ends in the middle of a record: being written still, or truncated."""


class ServiceError(HzsyncdError):
    """The remote ReportService could not be used."""


class TransportFailure(ServiceError):
    """No answer from the service: refused, reset, timeout, HTTP 5xx, SOAP fault, garbage."""


class IpDenied(ServiceError):
    """The service answered that this host's IP address is not on the allow-list."""
