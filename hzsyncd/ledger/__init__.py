"""The SQLite ledger: the only place that imports sqlite_utils or speaks SQL."""

from hzsyncd.ledger.reports import Reports
from hzsyncd.ledger.rule import Decision
from hzsyncd.ledger.schema import SCHEMA_VERSION
from hzsyncd.ledger.store import Ledger

__all__ = ["SCHEMA_VERSION", "Decision", "Ledger", "Reports"]
