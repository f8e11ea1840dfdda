"""Read-only views of the ledger for people: summaries, rejections, one key's story."""

from __future__ import annotations

from typing import Any

from hzsyncd.ledger.store import Ledger


class Reports:
    """Queries behind `status`, `failures`, `history` and the demo's summary."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._execute = ledger.execute
        self._all = ledger.all
        self._one = ledger.one

    def table_summary(self) -> dict[str, dict[str, int]]:
        """Per table: files by disposition, records by outcome (or state, if not final), and
        `ever_deferred`: records that met a relation error at least once."""
        summary: dict[str, dict[str, int]] = {}
        for table, disposition, count in self._execute(
            "SELECT table_name, disposition, count(*) FROM files WHERE state = 'final' "
            "GROUP BY 1, 2"
        ):
            summary.setdefault(table, {})[f"files_{disposition}"] = count
        for table, outcome, count in self._execute(
            "SELECT table_name, CASE WHEN state = 'final' THEN outcome ELSE state END, count(*) "
            "FROM records GROUP BY 1, 2"
        ):
            summary.setdefault(table, {})[outcome] = count
        for table, count in self._execute(
            "SELECT table_name, count(*) FROM records WHERE relation_since IS NOT NULL GROUP BY 1"
        ):
            summary.setdefault(table, {})["ever_deferred"] = count
        return summary

    def rejected(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Rejected records with their file name, oldest first."""
        return self._all(
            "SELECT r.table_name, r.key, r.line, r.code, r.messages, f.name AS file "
            "FROM records r JOIN files f ON f.id = r.file_id "
            "WHERE r.state = 'final' AND r.outcome = 'rejected' ORDER BY r.id LIMIT ?",
            [limit],
        )

    def history(self, table: str, key: str) -> list[dict[str, Any]]:
        """Every record of one key, oldest first, with its file and its attempts."""
        rows = self._all(
            "SELECT r.id, r.op, r.hash, r.state, r.outcome, r.code, r.messages, r.line, "
            "r.attempts, r.created_at, r.updated_at, f.name AS file, f.disposition, f.dest "
            "FROM records r JOIN files f ON f.id = r.file_id "
            "WHERE r.table_name = ? AND r.key = ? ORDER BY r.id",
            [table, key],
        )
        for row in rows:
            row["tries"] = self._all(
                "SELECT at, outcome, code, response, duration_ms FROM attempts "
                "WHERE record_id = ? ORDER BY id",
                [row["id"]],
            )
        return rows

    def current(self, table: str, key: str) -> dict[str, Any] | None:
        return self.ledger.current(table, key)

    def failed_files(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Files failed whole (unreadable, empty, truncated, changed), newest last."""
        return self._all(
            "SELECT name, table_name, op, reason, dest, finished_at FROM files "
            "WHERE disposition = 'failed' AND reason IS NOT NULL ORDER BY id DESC LIMIT ?",
            [limit],
        )[::-1]
