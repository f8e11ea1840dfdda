"""`hzsyncd send` end to end against the emulator over real HTTP, in both WSDL styles."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

from conftest import Invoke, data_calls, drop, dumps, ndjson, write_config

from hzsyncd.emulator import Emulator
from hzsyncd.tables import TABLES

# One parent record per table; children name the parents so every relation holds.
RECORDS = {
    "flat_info": {
        "flat_id": "F1",
        "flat_name": "江苏省中小企业公共服务平台",
        "flat_type": "1",
        "area_code": "320000",
        "register_asset": Decimal("30.10"),
        "remark": None,
    },
    "service_org_info": {
        "org_id": "O1",
        "org_property": "3",
        "org_name": "苏州服务中心",
        "area_code": "320000",
        "register_asset": Decimal("30.10"),
        "fax": None,
    },
    "org_info": {"org_id": "E1", "org_name": "无锡某某科技有限公司", "area_code": "320000"},
    "org_in_flat": {"flat_id": "F1", "org_id": "O1", "in_time": "2016-01"},
    "service_item": {
        "item_id": "I1",
        "org_id": "O1",
        "item_name": "融资辅导",
        "price": Decimal("0.50"),
    },
    "service_activity": {"activity_id": "A1", "item_id": "I1", "title": "政策宣讲会"},
    "service_credit": {"credit_id": "C1", "activity_id": "A1", "score": Decimal("4.50")},
}


def parse(text: str) -> object:
    return json.loads(text, parse_float=Decimal)


def send_json(hzsyncd: Invoke, config: Path, *paths: Path) -> tuple[int, dict]:
    result = hzsyncd("send", "-c", config, "--json", *paths)
    return result.exit_code, json.loads(result.stdout)


def drop_all_tables(spool: Path) -> list[Path]:
    paths = []
    for name, record in RECORDS.items():
        second = dict(record)
        for key in TABLES[name].key:
            second[key] = record[key] + "b"
        if name == "org_in_flat":
            second = {**record, "org_id": "O1"}
            second["flat_id"] = "F1"
            second["in_time"] = "2017-02"
        paths.append(drop(spool, name, f"{name}.ndjson", ndjson([record])))
        if name != "org_in_flat":
            paths.append(drop(spool, name, f"{name}-2.json", dumps(second, indent=2)))
    return paths


def test_send_all_tables_delivers_each_record_once_with_content_intact(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    paths = drop_all_tables(spool)
    # Deleted: the second credit and the second activity (no credit refers to it).
    deletes = [
        drop(spool, "service_credit", "gone.ndjson", ndjson([{"credit_id": "C1b"}]), delete=True),
        drop(
            spool, "service_activity", "gone.ndjson", ndjson([{"activity_id": "A1b"}]), delete=True
        ),
    ]

    code, report = send_json(hzsyncd, config_file, *paths, *deletes)

    assert code == 0, report
    calls = data_calls(emulator)
    assert len(calls) == len(paths) + len(deletes)
    assert all(c["areaCode"] == "320000" and c["response"] == "" for c in calls)
    sent = {(c["method"], c["json"]) for c in calls}
    assert len(sent) == len(calls), "a record was sent twice"
    flat = next(c for c in calls if c["method"] == "reportFlatInfo")
    assert flat["json"] == ndjson([RECORDS["flat_info"]]).strip()
    assert '"register_asset":30.10' in flat["json"] and "江苏省" in flat["json"]
    pretty = next(c for c in calls if c["method"] == "reportServiceOrgInfo" and "O1b" in c["json"])
    assert pretty["json"] == dumps(
        {**RECORDS["service_org_info"], "org_id": "O1b"}, separators=(",", ":")
    )
    assert list(json.loads(pretty["json"])) == list(RECORDS["service_org_info"])
    assert {c["method"] for c in calls} >= {"deleteServiceCredit", "deleteServiceActivity"}
    methods = [c["method"] for c in calls]
    assert methods.index("reportFlatInfo") < methods.index("reportOrgInFlat")
    assert methods.index("reportServiceActivity") < methods.index("reportServiceCredit")
    assert all(f["disposition"] == "done" for f in report["files"])
    assert all("/done/" in f["dest"] for f in report["files"])


def test_sending_the_same_files_again_makes_no_calls(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    records = [{"org_id": f"E{i}", "org_name": f"企业{i}"} for i in range(5)]
    first = drop(spool, "org_info", "a.ndjson", ndjson(records))
    assert send_json(hzsyncd, config_file, first)[0] == 0
    before = len(data_calls(emulator))

    again = drop(spool, "org_info", "a-renamed.ndjson", ndjson(records))
    code, report = send_json(hzsyncd, config_file, again)

    assert code == 0
    assert len(data_calls(emulator)) == before
    assert report["files"][0]["duplicate"] == 5
    assert report["files"][0]["disposition"] == "done"


def test_changed_record_is_sent_and_unchanged_neighbours_are_not(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    records = [{"org_id": f"E{i}", "org_name": f"企业{i}"} for i in range(3)]
    send_json(hzsyncd, config_file, drop(spool, "org_info", "a.ndjson", ndjson(records)))
    records[1]["org_name"] = "企业1（更名）"
    before = len(data_calls(emulator))

    code, _ = send_json(hzsyncd, config_file, drop(spool, "org_info", "b.ndjson", ndjson(records)))

    assert code == 0
    new_calls = data_calls(emulator)[before:]
    assert [json.loads(c["json"])["org_id"] for c in new_calls] == ["E1"]


def test_record_deleted_then_reported_again_is_sent_again(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    record = {"org_id": "E9", "org_name": "常州某公司"}
    send_json(hzsyncd, config_file, drop(spool, "org_info", "a.ndjson", ndjson([record])))
    send_json(
        hzsyncd,
        config_file,
        drop(spool, "org_info", "d.ndjson", ndjson([{"org_id": "E9"}]), delete=True),
    )
    code, _ = send_json(hzsyncd, config_file, drop(spool, "org_info", "b.ndjson", ndjson([record])))

    assert code == 0
    assert [c["method"] for c in data_calls(emulator)] == [
        "reportOrgInfo",
        "deleteOrgInfo",
        "reportOrgInfo",
    ]


def test_file_with_rejected_records_goes_to_failed_with_errors_report(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    records = [
        {"org_id": "O1", "org_property": "3", "org_name": "好"},
        {"org_id": "O2", "org_property": "7", "org_name": "坏"},
        {"org_id": "O3", "org_property": "9", "org_name": "好"},
    ]
    path = drop(spool, "service_org_info", "mixed.ndjson", ndjson(records))

    code, report = send_json(hzsyncd, config_file, path)

    assert code == 1
    delivered = sorted(
        json.loads(c["json"])["org_id"] for c in data_calls(emulator) if c["response"] == ""
    )
    assert delivered == ["O1", "O3"]
    failed = spool / "service_org_info" / "failed" / "mixed.ndjson"
    assert failed.exists() and not path.exists()
    errors = [
        json.loads(line)
        for line in (failed.parent / "mixed.ndjson.errors.ndjson").read_text("utf-8").splitlines()
    ]
    assert errors == [
        {
            "line": 2,
            "index": 1,
            "key": "O2",
            "outcome": "rejected",
            "code": None,
            "field": None,
            "messages": ["org_property取值范围应为[1, 2, 3, 5, 9, ]"],
            "record": records[1],
        }
    ]


def test_wholly_good_file_lands_in_dated_done_folder(
    hzsyncd: Invoke, emulator: Emulator, config_file: Path, spool: Path
) -> None:
    path = drop(spool, "org_info", "ok.json", json.dumps([{"org_id": "E1"}, {"org_id": "E2"}]))
    code, report = send_json(hzsyncd, config_file, path)
    assert code == 0
    dest = Path(report["files"][0]["dest"])
    assert dest.parent.parent == spool / "org_info" / "done"
    assert len(dest.parent.name) == 10 and dest.parent.name[4] == "-"
    assert dest.read_bytes() == json.dumps([{"org_id": "E1"}, {"org_id": "E2"}]).encode()


def test_service_down_exits_3_moves_nothing_then_delivers_once(
    hzsyncd: Invoke, tmp_path: Path, style: str, spool: Path
) -> None:
    receipts = tmp_path / "receipts.ndjson"
    with Emulator(port=0, style=style, allow=["127.0.0.1"], receipts=receipts) as emu:
        port = urlparse(emu.url).port
        config = write_config(tmp_path, emu.wsdl_url)
        warm = drop(spool, "org_info", "warm.ndjson", ndjson([{"org_id": "W"}]))
        assert send_json(hzsyncd, config, warm)[0] == 0  # the WSDL is now cached
    paths = [
        drop(spool, "org_info", "a.ndjson", ndjson([{"org_id": "E1"}, {"org_id": "E2"}])),
        drop(spool, "service_item", "b.ndjson", ndjson([{"item_id": "I1"}])),
    ]

    code, report = send_json(hzsyncd, config, *paths)

    assert code == 3
    assert all(p.exists() for p in paths), "a file was moved while the service was down"
    assert not list((spool / "org_info").glob("failed/*"))
    assert all(f["rejected"] == 0 for f in report["files"])
    with Emulator(port=port, style=style, allow=["127.0.0.1"], receipts=receipts) as emu:
        code, report = send_json(hzsyncd, config, *paths)
        assert code == 0, report
        keys = sorted(
            json.loads(c["json"]).get("org_id") or json.loads(c["json"])["item_id"]
            for c in data_calls(emu)
        )
    assert keys == ["E1", "E2", "I1"]


def test_ip_not_allowed_exits_4_until_ip_add(
    hzsyncd: Invoke, tmp_path: Path, style: str, spool: Path
) -> None:
    with Emulator(port=0, style=style, receipts=tmp_path / "r.ndjson") as emu:
        config = write_config(tmp_path, emu.wsdl_url)
        path = drop(spool, "org_info", "a.ndjson", ndjson([{"org_id": "E1"}, {"org_id": "E2"}]))

        code, report = send_json(hzsyncd, config, path)
        assert code == 4
        assert path.exists()
        assert report["files"][0]["rejected"] == 0

        added = hzsyncd("ip", "add", "-c", config, "127.0.0.1")
        assert added.exit_code == 0 and "registered" in added.stdout
        assert hzsyncd("ip", "list", "-c", config).stdout.split() == ["127.0.0.1"]

        code, report = send_json(hzsyncd, config, path)
        assert code == 0
        responses = [c["response"] for c in data_calls(emu)]
        # Calls already in flight when the refusal came back are refused too, no more.
        refused = responses.count("当前报送IP地址非法")
        assert 1 <= refused <= 4 and responses[refused:] == ["", ""]
