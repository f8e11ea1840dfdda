"""What the emulated ReportService decides: accounts, allow-lists, validation, relations, state.

Replies of a data call (`ReportService.call`), in the order they are checked:

- `当前报送IP地址非法`: the TCP peer is on the allow-list of no enabled account.
- `error-1006：地区编码在地区码表中未找到`: the `areaCode` parameter is not a known area code.
- `["json不能为空"]`: the `json` parameter is missing, null or blank;
  `["json格式错误"]`: it does not parse, or is not a JSON object.
- Staging checks, all messages of the record in one compact JSON array: `<key field>不能为空`
  for each missing key field, then (reports only, any table) `flat_type取值范围应为[1, 2, 3]`
  and `org_property取值范围应为[1, 2, 3, 5, 9, ]`.
- Reports: `error-1006：地区编码在地区码表中未找到` for the record's own unknown `area_code`, then
  the first missing parent (relation fields are checked only when present and not blank):
  `error-2001：入驻平台在平台表中未找到` (org_in_flat `flat_id` → flat_info),
  `error-2002：入驻服务机构在服务机构表中未找到` (org_in_flat `org_id` → service_org_info),
  `error-2003：服务项目所属服务机构在服务机构表中未找到` (service_item `org_id`),
  `error-2004：服务活动所属服务项目在服务项目表中未找到` (service_activity `item_id`),
  `error-2005：服务评价所属服务活动在服务活动表中未找到` (service_credit `activity_id`).
- Deletes: `error-3001：待删除的数据不存在` for a key that is not stored.
- `""` (the empty string): accepted; a report inserts or replaces the record of its key, a delete
  removes it.

Only the IP sentence, the two example messages and error-1006 come from the interface document;
the 2xxx/3xxx codes are ours. Delete calls are checked for key fields only. A blank `area_code`
counts as absent. Optional relation fields (service_item `org_id`, ...) are checked only when
present and not blank. The stored data is one global set, not one per area code: keys are meant
to be unique nationwide, and one set keeps the demo's parents visible to every platform.

Account calls: `addIP` 1 / -1 wrong user or password / -2 disabled / -3 already present;
`delIP` 1 / -1 / -2 (unknown addresses in the list are ignored); `getIP` a compact JSON array,
or the string "-1" / "-2" for bad credentials or a disabled account (the document defines no
error return for getIP; the codes of addIP as text are what a Java `String` method would give).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hzsyncd.tables import DATA_METHODS, TABLES, Operation

IP_DENIED = "当前报送IP地址非法"
UNKNOWN_AREA = "error-1006：地区编码在地区码表中未找到"
NO_FLAT = "error-2001：入驻平台在平台表中未找到"
NO_FLAT_ORG = "error-2002：入驻服务机构在服务机构表中未找到"
NO_ITEM_ORG = "error-2003：服务项目所属服务机构在服务机构表中未找到"
NO_ACTIVITY_ITEM = "error-2004：服务活动所属服务项目在服务项目表中未找到"
NO_CREDIT_ACTIVITY = "error-2005：服务评价所属服务活动在服务活动表中未找到"
NOT_STORED = "error-3001：待删除的数据不存在"
JSON_EMPTY = "json不能为空"
JSON_INVALID = "json格式错误"
FLAT_TYPE_RANGE = "flat_type取值范围应为[1, 2, 3]"
ORG_PROPERTY_RANGE = "org_property取值范围应为[1, 2, 3, 5, 9, ]"

FLAT_TYPES = frozenset({"1", "2", "3"})
ORG_PROPERTIES = frozenset({"1", "2", "3", "5", "9"})

# (child table, field, parent table, reply); checked in this order, the first miss answers.
RELATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("org_in_flat", "flat_id", "flat_info", NO_FLAT),
    ("org_in_flat", "org_id", "service_org_info", NO_FLAT_ORG),
    ("service_item", "org_id", "service_org_info", NO_ITEM_ORG),
    ("service_activity", "item_id", "service_item", NO_ACTIVITY_ITEM),
    ("service_credit", "activity_id", "service_activity", NO_CREDIT_ACTIVITY),
)

PROVINCE_CODES = (
    "110000 120000 130000 140000 150000 210000 220000 230000 310000 320000 330000 340000 "
    "350000 360000 370000 410000 420000 430000 440000 450000 460000 500000 510000 520000 "
    "530000 540000 610000 620000 630000 640000 650000 710000 810000 820000"
).split()
# Jiangsu's 13 prefecture-level cities, so that the examples can use realistic city codes.
JIANGSU_CITY_CODES = (
    "320100 320200 320300 320400 320500 320600 320700 320800 320900 321000 321100 321200 321300"
).split()
AREA_CODES = frozenset(PROVINCE_CODES + JIANGSU_CITY_CODES)

_AREA_CODE = re.compile(r"\d{6}")


@dataclass(frozen=True)
class Account:
    """A reporting platform's account: `Account("demo", "demo", "320000")`."""

    user_id: str
    password: str = field(repr=False)
    area_code: str
    disabled: bool = False

    @classmethod
    def parse(cls, text: str) -> Account:
        """Parse `USER:PASSWORD:AREA_CODE[:disabled]`; the password may itself contain colons.

        Raises ValueError saying what is wrong (never echoing the password).
        """
        disabled = text.endswith(":disabled")
        if disabled:
            text = text[: -len(":disabled")]
        user_id, sep, rest = text.partition(":")
        password, sep2, area_code = rest.rpartition(":")
        if not (sep and sep2):
            raise ValueError("account must be USER:PASSWORD:AREA_CODE[:disabled]")
        if not user_id:
            raise ValueError("account: USER is empty (USER:PASSWORD:AREA_CODE[:disabled])")
        if not password:
            raise ValueError(f"account {user_id}: PASSWORD is empty")
        if not _AREA_CODE.fullmatch(area_code):
            raise ValueError(f"account {user_id}: area code {area_code!r} is not 6 digits")
        return cls(user_id, password, area_code, disabled)


def _blank(value: Any) -> bool:
    """True for what `Table.key_of` refuses as a key part: null, empty, or not a scalar."""
    return value is None or isinstance(value, (dict, list, bool)) or str(value).strip() == ""


def _in_range(value: Any, allowed: frozenset[str]) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return False
    return str(value).strip() in allowed


class ReportService:
    """The service's state behind one lock; every method is safe to call from any thread."""

    def __init__(
        self,
        accounts: Iterable[Account],
        allow: Iterable[str] = (),
        area_codes: Iterable[str] = (),
    ) -> None:
        self._lock = threading.Lock()
        self._accounts = {a.user_id: a for a in accounts}
        initial = [ip.strip() for ip in allow if ip.strip()]
        self._allowed: dict[str, list[str]] = {u: list(initial) for u in self._accounts}
        self.area_codes = AREA_CODES | frozenset(a.strip() for a in area_codes)
        self._rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in TABLES}

    # -- accounts ---------------------------------------------------------------------------

    def _check(self, user_id: str | None, password: str | None) -> int:
        account = self._accounts.get(user_id or "")
        if account is None or account.password != password:
            return -1
        return -2 if account.disabled else 1

    def add_ip(self, user_id: str | None, password: str | None, ip: str | None) -> int:
        with self._lock:
            status = self._check(user_id, password)
            if status != 1:
                return status
            address = (ip or "").strip()
            listed = self._allowed[user_id or ""]
            if address in listed:
                return -3
            listed.append(address)
            return 1

    def del_ip(self, user_id: str | None, password: str | None, ip_csv: str | None) -> int:
        with self._lock:
            status = self._check(user_id, password)
            if status != 1:
                return status
            gone = {part.strip() for part in (ip_csv or "").split(",")}
            listed = self._allowed[user_id or ""]
            listed[:] = [ip for ip in listed if ip not in gone]
            return 1

    def get_ip(self, user_id: str | None, password: str | None) -> str:
        with self._lock:
            status = self._check(user_id, password)
            if status != 1:
                return str(status)
            return json.dumps(self._allowed[user_id or ""], separators=(",", ":"))

    def allowed(self, remote: str) -> bool:
        """Whether `remote` is on the allow-list of an enabled account."""
        with self._lock:
            return any(
                remote in self._allowed[user_id]
                for user_id, account in self._accounts.items()
                if not account.disabled
            )

    # -- data -------------------------------------------------------------------------------

    def call(self, method: str, json_text: str | None, area_code: str | None, remote: str) -> str:
        """Answer one data call (`method` one of `DATA_METHODS`) as the real service would."""
        table, op = DATA_METHODS[method]
        if not self.allowed(remote):
            return IP_DENIED
        if (area_code or "").strip() not in self.area_codes:
            return UNKNOWN_AREA
        if json_text is None or not json_text.strip():
            return _messages([JSON_EMPTY])
        try:
            record = json.loads(json_text)
        except ValueError:
            return _messages([JSON_INVALID])
        if not isinstance(record, dict):
            return _messages([JSON_INVALID])
        problems = [f"{name}不能为空" for name in table.key if _blank(record.get(name))]
        if op is Operation.REPORT:
            problems += self._range_problems(record)
        if problems:
            return _messages(problems)
        key = table.key_of(record)
        with self._lock:
            rows = self._rows[table.name]
            if op is Operation.DELETE:
                if rows.pop(key, None) is None:
                    return NOT_STORED
                return ""
            own_area = record.get("area_code")
            if not _blank(own_area) and str(own_area).strip() not in self.area_codes:
                return UNKNOWN_AREA
            for child, name, parent, reply in RELATIONS:
                value = record.get(name)
                if child == table.name and not _blank(value):
                    if str(value) not in self._rows[parent]:
                        return reply
            rows[key] = record
            return ""

    @staticmethod
    def _range_problems(record: dict[str, Any]) -> list[str]:
        problems = []
        if record.get("flat_type") is not None and not _in_range(record["flat_type"], FLAT_TYPES):
            problems.append(FLAT_TYPE_RANGE)
        prop = record.get("org_property")
        if prop is not None and not _in_range(prop, ORG_PROPERTIES):
            problems.append(ORG_PROPERTY_RANGE)
        return problems

    def stored(self, table: str) -> dict[str, dict[str, Any]]:
        """A copy of one table's stored records by key, for tests and the demo summary."""
        with self._lock:
            return dict(self._rows[table])


def _messages(problems: list[str]) -> str:
    return json.dumps(problems, ensure_ascii=False, separators=(",", ":"))
