"""What a reply means: the server's text turned into an Outcome; the catalogue of error codes."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import simplejson


class Outcome(enum.StrEnum):
    """What became of one record (DESIGN §5)."""

    OK = "ok"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RELATION = "relation"
    IP_DENIED = "ip_denied"
    TRANSPORT = "transport"


@dataclass(frozen=True)
class CodeInfo:
    meaning: str
    retryable: bool


# Codes of part 8 of the 2014 data-indicator specification, which we do not have: extended as
# codes are met. A code not listed here is treated as a missing relation (retryable) because
# that is the only kind of error-NNNN the interface document describes.
CODE_CATALOGUE: dict[str, CodeInfo] = {
    "1006": CodeInfo("area code not found in the area-code table", retryable=True),
}

# Local refusals: the record never reached the server.
INVALID_CODE = "invalid"

_RELATION = re.compile(r"^\s*error-(\d+)\s*[：:]\s*(.*)$", re.DOTALL)
# The interface document gives the sentence 当前报送IP地址非法; match its essence so that a
# reworded variant still pauses sending instead of rejecting good records.
_IP_DENIED = re.compile(r"IP.{0,8}非法|非法.{0,8}IP", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Reply:
    """A classified answer of a data call. `raw` is the server's text verbatim."""

    outcome: Outcome
    code: str | None = None
    messages: tuple[str, ...] = ()
    raw: str | None = None

    @property
    def retryable(self) -> bool:
        if self.outcome is not Outcome.RELATION or self.code is None:
            return self.outcome is Outcome.RELATION
        info = CODE_CATALOGUE.get(self.code)
        return info.retryable if info else True


def classify_reply(text: str | None) -> Reply:
    """Turn the string a data call returned into a Reply.

    Success is the empty string; a SOAP stack may hand it over as None or an empty element.
    """
    if text is None or text.strip() == "":
        return Reply(Outcome.OK, raw=text)
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = simplejson.loads(stripped)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            messages = tuple(m if isinstance(m, str) else simplejson.dumps(m) for m in parsed)
            return Reply(Outcome.REJECTED, messages=messages, raw=text)
    relation = _RELATION.match(stripped)
    if relation:
        return Reply(Outcome.RELATION, code=relation.group(1), messages=(stripped,), raw=text)
    if _IP_DENIED.search(stripped):
        return Reply(Outcome.IP_DENIED, messages=(stripped,), raw=text)
    return Reply(Outcome.REJECTED, messages=(stripped,), raw=text)
