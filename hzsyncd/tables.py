"""The seven tables of ReportService as data: folders, operations, key fields, parent order."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Operation(enum.StrEnum):
    REPORT = "report"
    DELETE = "delete"


@dataclass(frozen=True)
class Table:
    """One table: `name` is our folder name, `stem` the suffix of its SOAP operations.

    `rank` orders tables parents first: every table of rank n may refer to tables of a lower
    rank only, so sending rank by rank never sends a child before its parent.
    """

    name: str
    stem: str
    title: str
    key: tuple[str, ...]
    rank: int

    def method(self, op: Operation) -> str:
        """The SOAP operation name, e.g. `reportFlatInfo` or `deleteFlatInfo`."""
        return f"{op.value}{self.stem}"

    def key_of(self, record: Mapping[str, Any]) -> str:
        """The record's key as one string (composite keys joined by `|`).

        Raises MissingKey naming the first key field that is absent, null or empty.
        """
        parts = []
        for field in self.key:
            value = record.get(field)
            if value is None or isinstance(value, (dict, list, bool)) or str(value).strip() == "":
                raise MissingKey(field)
            parts.append(str(value))
        return "|".join(parts)


class MissingKey(ValueError):
    """A record lacks a key field; `field` names it."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(f"key field {field!r} is missing or empty")


# Key fields other than service_org_info's are our assumption (DESIGN §1); [tables.X] key
# in the config overrides them.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("flat_info", "FlatInfo", "省平台、窗口平台基本情况", ("flat_id",), 0),
        Table("service_org_info", "ServiceOrgInfo", "服务机构基本情况", ("org_id",), 0),
        Table("org_info", "OrgInfo", "服务对象", ("org_id",), 0),
        Table("org_in_flat", "OrgInFlat", "入驻服务机构", ("flat_id", "org_id"), 1),
        Table("service_item", "ServiceItem", "服务项目", ("item_id",), 1),
        Table("service_activity", "ServiceActivity", "服务活动", ("activity_id",), 2),
        Table("service_credit", "ServiceCredit", "服务过程及服务评价", ("credit_id",), 3),
    )
}

DATA_METHODS: dict[str, tuple[Table, Operation]] = {
    table.method(op): (table, op) for table in TABLES.values() for op in Operation
}
ACCOUNT_METHODS = ("addIP", "delIP", "getIP")
