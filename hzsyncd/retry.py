"""`hzsyncd retry`: send again, on request, records the server rejected (DESIGN §4)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hzsyncd.errors import IpDenied, TransportFailure
from hzsyncd.logs import event
from hzsyncd.outcomes import INVALID_CODE, Outcome
from hzsyncd.session import Session
from hzsyncd.tables import Operation


@dataclass
class Retried:
    table: str
    key: str
    file: str
    verdict: str


def retry_rejected(session: Session, table: str | None, key: str | None) -> list[Retried]:
    """Send each matching rejected record once more, with the content that was rejected.

    Records refused locally (not JSON, no key) are not retried: they never reached the server
    and need fixing in the file. A record whose key has since been accepted with that same
    content is skipped. Transport failures and IP refusals propagate (exit 3 / 4).
    """
    ledger, config = session.ledger, session.config
    done: list[Retried] = []
    seen: set[tuple[str, str, str, str]] = set()
    for row in ledger.retryable_rejections(table, key, INVALID_CODE):
        content = (row["table_name"], row["key"], row["op"], row["hash"])
        current = ledger.current(row["table_name"], row["key"])
        if content in seen or (current and (current["op"], current["hash"]) == content[2:]):
            continue
        seen.add(content)
        chosen = config.tables[row["table_name"]]
        ledger.mark_sending(row["id"])
        ledger.commit()
        try:
            reply, elapsed = session.client.call(
                chosen.method(Operation(row["op"])), row["payload"], config.area_codes[chosen.name]
            )
            if reply.outcome is Outcome.IP_DENIED:
                raise IpDenied(reply.raw or "IP not allowed")
        except (TransportFailure, IpDenied):
            ledger.update_record(row["id"], state="final")  # still rejected, as before
            ledger.commit()
            raise
        ledger.add_attempt(row["id"], reply.outcome.value, reply.code, reply.raw, elapsed)
        accepted = reply.outcome is Outcome.OK
        if accepted:
            ledger.accept(
                row["id"],
                chosen.name,
                row["key"],
                row["op"],
                row["hash"],
                response=reply.raw,
                duration_ms=elapsed,
            )
        else:
            ledger.update_record(
                row["id"],
                state="final",
                outcome=Outcome.REJECTED.value,
                code=reply.code,
                messages=list(reply.messages),
                response=reply.raw,
            )
        ledger.commit()
        verdict = "accepted" if accepted else "rejected again: " + "; ".join(reply.messages)
        event(
            logging.INFO if accepted else logging.WARNING,
            f"retried: {verdict}",
            table=chosen.name,
            file=row["file"],
            key=row["key"],
            outcome=reply.outcome.value,
        )
        done.append(Retried(chosen.name, row["key"], row["file"], verdict))
    return done
