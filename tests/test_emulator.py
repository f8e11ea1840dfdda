"""The emulator over real HTTP, with zeep as the client, in both WSDL styles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import zeep
import zeep.exceptions
from lxml import etree

from hzsyncd.emulator import FAULT_MODES, Account, Emulator
from hzsyncd.tables import DATA_METHODS, TABLES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IP_DENIED = "当前报送IP地址非法"
UNKNOWN_AREA = "error-1006：地区编码在地区码表中未找到"
ALL_OPERATIONS = {*DATA_METHODS, "addIP", "delIP", "getIP"}
FLAT = {"flat_id": "F1", "flat_name": "江苏省中小企业公共服务平台", "flat_type": "1"}
ORG = {"org_id": "O1", "org_property": 3, "org_name": "南京市中小企业服务中心"}


@pytest.fixture(params=["rpc", "document"])
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def emulator(style: str, tmp_path: Path) -> Iterator[Emulator]:
    accounts = [Account("demo", "demo", "320000"), Account("off", "pw", "320100", disabled=True)]
    with Emulator(style=style, accounts=accounts, receipts=tmp_path / "receipts.ndjson") as emu:
        yield emu


@pytest.fixture
def allowed(emulator: Emulator) -> Emulator:
    """An emulator whose demo account already lists 127.0.0.1."""
    assert emulator.service.add_ip("demo", "demo", "127.0.0.1") == 1
    return emulator


def make_client(emu: Emulator, operation_timeout: float = 5) -> zeep.Client:
    transport = zeep.Transport(timeout=5, operation_timeout=operation_timeout)
    return zeep.Client(emu.wsdl_url, transport=transport)


@pytest.fixture
def client(emulator: Emulator) -> Iterator[zeep.Client]:
    client = make_client(emulator)
    yield client
    client.transport.session.close()


def send(client: zeep.Client, method: str, record: Any, area: str = "320000") -> Any:
    text = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
    return client.service[method](json=text, areaCode=area)


def post(emu: Emulator, operation: str, params: str, ns: str = "http://service.report") -> str:
    """A hand-written call; returns the body of the reply as sent."""
    if emu.style == "document":
        ns = "http://service.report/"
    envelope = (
        '<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        f'<o:{operation} xmlns:o="{ns}">{params}</o:{operation}></e:Body></e:Envelope>'
    )
    reply = requests.post(emu.url, data=envelope.encode(), timeout=5)
    return reply.content.decode()


def returned(reply: str) -> str:
    """The value a reply returns, character references decoded."""
    body = etree.fromstring(reply.encode()).find("{http://schemas.xmlsoap.org/soap/envelope/}Body")
    return str(body[0][0].text or "")


# -- WSDL ------------------------------------------------------------------------------------


def test_wsdl_loads_in_zeep_with_all_17_operations(emulator: Emulator, client: zeep.Client) -> None:
    assert set(client.service._binding._operations) == ALL_OPERATIONS
    assert client.service._binding_options["address"] == emulator.url


def test_wsdl_matches_the_reference_stack(emulator: Emulator) -> None:
    wsdl = etree.fromstring(requests.get(emulator.wsdl_url, timeout=5).content)
    if emulator.style == "rpc":
        assert wsdl.get("targetNamespace") == emulator.url
        bodies = wsdl.findall(".//{http://schemas.xmlsoap.org/wsdl/soap/}body")
        assert {b.get("use") for b in bodies} == {"encoded"}
    else:
        schema_url = wsdl.find(".//{http://www.w3.org/2001/XMLSchema}import").get("schemaLocation")
        assert schema_url == emulator.url + "?xsd=1"
        schema = requests.get(schema_url, timeout=5)
        assert schema.status_code == 200 and b'name="reportFlatInfo"' in schema.content


# -- accounts --------------------------------------------------------------------------------


def test_data_call_before_add_ip_is_refused_with_the_ip_sentence(client: zeep.Client) -> None:
    assert send(client, "reportFlatInfo", FLAT) == IP_DENIED


def test_add_ip_returns_the_documented_codes(client: zeep.Client) -> None:
    add = client.service.addIP
    assert add(userId="demo", password="demo", IP="127.0.0.1") == 1
    assert add(userId="demo", password="demo", IP="127.0.0.1") == -3
    assert add(userId="demo", password="wrong", IP="10.0.0.1") == -1
    assert add(userId="nobody", password="demo", IP="10.0.0.1") == -1
    assert add(userId="off", password="pw", IP="10.0.0.1") == -2
    assert isinstance(add(userId="demo", password="demo", IP="10.0.0.2"), int)


def test_del_ip_and_get_ip_keep_the_list(client: zeep.Client) -> None:
    service = client.service
    for ip in ("127.0.0.1", "10.0.0.1", "10.0.0.2"):
        service.addIP(userId="demo", password="demo", IP=ip)
    assert json.loads(service.getIP(userId="demo", password="demo")) == [
        "127.0.0.1",
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert service.delIP(userId="demo", password="demo", IPCsv="10.0.0.1 , 10.0.0.2,9.9.9.9") == 1
    assert service.getIP(userId="demo", password="demo") == '["127.0.0.1"]'
    assert service.delIP(userId="demo", password="x", IPCsv="127.0.0.1") == -1
    assert service.delIP(userId="off", password="pw", IPCsv="127.0.0.1") == -2
    assert service.getIP(userId="demo", password="x") == "-1"
    assert service.getIP(userId="off", password="pw") == "-2"
    assert send(client, "reportFlatInfo", FLAT) is None
    assert service.delIP(userId="demo", password="demo", IPCsv="127.0.0.1") == 1
    assert send(client, "reportFlatInfo", FLAT) == IP_DENIED


def test_initial_allow_list_is_given_to_every_account() -> None:
    accounts = [Account("a", "a", "320000"), Account("b", "b", "110000")]
    with Emulator(accounts=accounts, allow=["127.0.0.1"]) as emu:
        assert emu.service.get_ip("b", "b") == '["127.0.0.1"]'
        assert emu.service.call("reportFlatInfo", json.dumps(FLAT), "320000", "127.0.0.1") == ""


def test_list_of_a_disabled_account_does_not_allow_data_calls() -> None:
    accounts = [Account("off", "pw", "320000", disabled=True)]
    with Emulator(accounts=accounts, allow=["127.0.0.1"]) as emu:
        assert emu.service.call("reportFlatInfo", json.dumps(FLAT), "320000", "127.0.0.1") == (
            IP_DENIED
        )


def test_account_parse_reads_user_password_area_and_disabled() -> None:
    assert Account.parse("demo:demo:320000") == Account("demo", "demo", "320000")
    assert Account.parse("u:p:a:ss:320100:disabled") == Account("u", "p:a:ss", "320100", True)
    for bad in ("demo", "demo:demo", ":pw:320000", "demo::320000", "demo:pw:32"):
        with pytest.raises(ValueError, match="account"):
            Account.parse(bad)
    assert "secret" not in repr(Account("u", "secret", "320000"))


# -- data calls ------------------------------------------------------------------------------


def test_accepted_report_and_delete_return_none(allowed: Emulator, client: zeep.Client) -> None:
    assert send(client, "reportFlatInfo", FLAT) is None
    assert send(client, "reportFlatInfo", {**FLAT, "flat_name": "改名"}) is None
    assert allowed.service.stored("flat_info")["F1"]["flat_name"] == "改名"
    assert send(client, "deleteFlatInfo", {"flat_id": "F1"}) is None
    assert allowed.service.stored("flat_info") == {}


def test_staging_errors_come_as_one_json_array(allowed: Emulator, client: zeep.Client) -> None:
    reply = send(client, "reportFlatInfo", {**FLAT, "flat_type": 4, "org_property": "4"})
    assert reply == '["flat_type取值范围应为[1, 2, 3]","org_property取值范围应为[1, 2, 3, 5, 9, ]"]'
    reply = send(client, "reportOrgInFlat", {"in_time": "2024-01", "org_property": 9})
    assert json.loads(reply) == ["flat_id不能为空", "org_id不能为空"]
    assert json.loads(send(client, "reportFlatInfo", "{not json")) == ["json格式错误"]
    assert json.loads(send(client, "reportFlatInfo", "[1, 2]")) == ["json格式错误"]
    assert send(client, "reportServiceOrgInfo", {**ORG, "org_property": "5"}) is None


def test_delete_checks_key_fields_only(allowed: Emulator, client: zeep.Client) -> None:
    assert send(client, "reportFlatInfo", FLAT) is None
    assert send(client, "deleteFlatInfo", {**FLAT, "flat_type": 7}) is None
    assert json.loads(send(client, "deleteFlatInfo", {"flat_type": 7})) == ["flat_id不能为空"]


def test_unknown_area_code_gives_error_1006(allowed: Emulator, client: zeep.Client) -> None:
    assert send(client, "reportFlatInfo", FLAT, area="999999") == UNKNOWN_AREA
    assert send(client, "reportFlatInfo", {**FLAT, "area_code": "999999"}) == UNKNOWN_AREA
    assert send(client, "reportFlatInfo", {**FLAT, "area_code": "320100"}) is None


def test_extra_area_codes_are_known() -> None:
    with Emulator(allow=["127.0.0.1"], area_codes=["320102"]) as emu:
        assert emu.service.call("reportFlatInfo", json.dumps(FLAT), "320102", "127.0.0.1") == ""


def test_relation_error_clears_once_the_parent_is_reported(
    allowed: Emulator, client: zeep.Client
) -> None:
    link = {"flat_id": "F1", "org_id": "O1", "in_time": "2024-03-01"}
    assert send(client, "reportOrgInFlat", link) == "error-2001：入驻平台在平台表中未找到"
    assert send(client, "reportFlatInfo", FLAT) is None
    assert send(client, "reportOrgInFlat", link) == "error-2002：入驻服务机构在服务机构表中未找到"
    assert send(client, "reportServiceOrgInfo", ORG) is None
    assert send(client, "reportOrgInFlat", link) is None
    assert set(allowed.service.stored("org_in_flat")) == {"F1|O1"}


def test_chain_of_children_needs_each_parent(allowed: Emulator, client: zeep.Client) -> None:
    item = {"item_id": "I1", "org_id": "O1", "item_name": "融资对接"}
    activity = {"activity_id": "A1", "item_id": "I1"}
    credit = {"credit_id": "C1", "activity_id": "A1", "score": 5}
    assert send(client, "reportServiceItem", item).startswith("error-2003：")
    assert send(client, "reportServiceActivity", activity).startswith("error-2004：")
    assert send(client, "reportServiceCredit", credit).startswith("error-2005：")
    assert send(client, "reportServiceOrgInfo", ORG) is None
    for method, record in [
        ("reportServiceItem", item),
        ("reportServiceActivity", activity),
        ("reportServiceCredit", credit),
    ]:
        assert send(client, method, record) is None
    assert send(client, "reportServiceItem", {"item_id": "I2"}) is None  # org_id is optional


def test_delete_of_an_unknown_key_is_a_relation_error(
    allowed: Emulator, client: zeep.Client
) -> None:
    assert send(client, "deleteServiceCredit", {"credit_id": "C9"}) == (
        "error-3001：待删除的数据不存在"
    )


def test_every_data_operation_is_served(allowed: Emulator, client: zeep.Client) -> None:
    for method, (table, _) in DATA_METHODS.items():
        reply = send(client, method, {"unrelated": 1})
        assert json.loads(reply) == [f"{field}不能为空" for field in table.key], method


def test_unknown_parameter_name_reads_as_null(allowed: Emulator) -> None:
    reply = post(allowed, "reportFlatInfo", "<JSON>{}</JSON><areaCode>320000</areaCode>")
    assert returned(reply) == '["json不能为空"]'


def test_qualified_parameter_reads_as_null_in_document_style_only(allowed: Emulator) -> None:
    params = (
        '<json xmlns="http://service.report/">{"flat_id":"F1"}</json><areaCode>320000</areaCode>'
    )
    expected = '["json不能为空"]' if allowed.style == "document" else ""
    assert returned(post(allowed, "reportFlatInfo", params)) == expected


def test_rpc_accepts_typed_parameters_in_any_namespace() -> None:
    with Emulator(allow=["127.0.0.1"]) as emu:
        params = (
            '<json xmlns:x="http://www.w3.org/2001/XMLSchema-instance" x:type="xsd:string">'
            '{"flat_id":"F1"}</json><areaCode>320000</areaCode>'
        )
        reply = post(emu, "reportFlatInfo", params, ns="urn:anything")
        assert '<reportFlatInfoReturn xsi:type="xsd:string"></reportFlatInfoReturn>' in reply
        assert 'xmlns:ns1="urn:anything"' in reply


def test_replies_are_written_as_each_stack_writes_them(emulator: Emulator) -> None:
    reply = post(emulator, "reportFlatInfo", "<json>{}</json><areaCode>320000</areaCode>")
    if emulator.style == "rpc":
        assert "&#x5F53;&#x524D;&#x62A5;&#x9001;IP&#x5730;&#x5740;&#x975E;&#x6CD5;" in reply
        assert reply.isascii()
    else:
        assert f"<return>{IP_DENIED}</return>" in reply
    emulator.service.add_ip("demo", "demo", "127.0.0.1")
    reply = post(
        emulator, "reportFlatInfo", '<json>{"flat_id":"F1"}</json><areaCode>320000</areaCode>'
    )
    if emulator.style == "rpc":
        assert '<reportFlatInfoReturn xsi:type="xsd:string"></reportFlatInfoReturn>' in reply
    else:
        assert "<return></return>" in reply


def test_chinese_round_trips_through_both_styles(allowed: Emulator, client: zeep.Client) -> None:
    record = {"org_id": "O中1", "org_name": "苏州工业园区𠀋服务中心", "register_asset": 30.10}
    text = json.dumps(record, ensure_ascii=False).replace("30.1", "30.10")
    assert send(client, "reportServiceOrgInfo", text) is None
    assert allowed.receipts()[-1]["json"] == text
    assert send(client, "reportOrgInFlat", {"flat_id": "无", "org_id": "O中1"}).endswith(
        "入驻平台在平台表中未找到"
    )


def test_unknown_operation_and_bad_envelope_are_http_500_faults(emulator: Emulator) -> None:
    reply = requests.post(emulator.url, data=b"<not-closed", timeout=5)
    assert reply.status_code == 500 and b"Fault>" in reply.content
    reply = requests.post(emulator.url, data=b"<a/>", timeout=5)
    assert reply.status_code == 500 and b"Fault>" in reply.content
    assert "Fault>" in post(emulator, "reportNothing", "")


# -- receipts and test hooks -----------------------------------------------------------------


def test_receipts_file_has_one_line_per_call_and_no_password(
    emulator: Emulator, client: zeep.Client, tmp_path: Path
) -> None:
    client.service.addIP(userId="demo", password="s3cret-demo", IP="127.0.0.1")
    send(client, "reportFlatInfo", FLAT)
    client.service.getIP(userId="demo", password="demo")
    client.service.delIP(userId="demo", password="demo", IPCsv="127.0.0.1")
    text = (tmp_path / "receipts.ndjson").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines == emulator.receipts()
    assert [line["method"] for line in lines] == ["addIP", "reportFlatInfo", "getIP", "delIP"]
    assert "password" not in text and "s3cret" not in text
    assert lines[0]["IP"] == "127.0.0.1" and lines[0]["response"] == -1
    data = lines[1]
    assert data["json"] == json.dumps(FLAT, ensure_ascii=False)
    assert (data["areaCode"], data["remote"], data["response"]) == (
        "320000",
        "127.0.0.1",
        IP_DENIED,
    )
    assert abs(data["time"] - time.time()) < 60
    assert lines[3]["IPCsv"] == "127.0.0.1"


def test_fail_every_answers_every_nth_data_call_with_http_500(
    allowed: Emulator, client: zeep.Client
) -> None:
    allowed.fail_every = 3
    outcomes = []
    for i in range(7):
        try:
            outcomes.append(send(client, "reportFlatInfo", {"flat_id": f"F{i}"}))
        except zeep.exceptions.TransportError as exc:
            outcomes.append(exc.status_code)
    assert outcomes == [None, None, 500, None, None, 500, None]
    client.service.getIP(userId="demo", password="demo")  # account calls are not counted
    faults = [r.get("fault") for r in allowed.receipts() if r["method"] == "reportFlatInfo"]
    assert faults == [None, None, "http500", None, None, "http500", None]
    assert set(allowed.service.stored("flat_info")) == {"F0", "F1", "F3", "F4", "F6"}


EXPECTED_FAILURE: dict[str, type[Exception]] = {
    "http500": zeep.exceptions.TransportError,
    "http503": zeep.exceptions.TransportError,
    "reset": requests.ConnectionError,
    "stall": requests.Timeout,
    "garbage": zeep.exceptions.TransportError,
    "fault": zeep.exceptions.Fault,
}


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_set_fault_fails_data_calls_only(allowed: Emulator, mode: str) -> None:
    client = make_client(allowed, operation_timeout=0.3)
    allowed.set_fault(mode)
    with pytest.raises(EXPECTED_FAILURE[mode]) as failure:
        send(client, "reportFlatInfo", FLAT)
    if mode == "fault":
        assert failure.value.message == "java.util.ConcurrentModificationException"
    if mode.startswith("http"):
        assert failure.value.status_code == int(mode[4:])  # type: ignore[attr-defined]
    assert client.service.getIP(userId="demo", password="demo") == '["127.0.0.1"]'
    assert requests.get(allowed.wsdl_url, timeout=5).status_code == 200
    allowed.set_fault(None)
    assert send(client, "reportFlatInfo", FLAT) is None
    receipts = [r for r in allowed.receipts() if r["method"] == "reportFlatInfo"]
    assert [(r["response"], r.get("fault")) for r in receipts] == [(None, mode), ("", None)]
    client.transport.session.close()


def test_set_fault_refuses_an_unknown_mode(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="fault mode"):
        emulator.set_fault("http418")


def test_latency_ms_delays_data_calls(allowed: Emulator, client: zeep.Client) -> None:
    allowed.latency_ms = 150
    started = time.monotonic()
    send(client, "reportFlatInfo", FLAT)
    assert time.monotonic() - started >= 0.15


def test_500_sequential_calls_complete(allowed: Emulator, client: zeep.Client) -> None:
    for i in range(500):
        assert send(client, "reportFlatInfo", {"flat_id": f"F{i}"}) is None
    assert len(allowed.service.stored("flat_info")) == 500


def test_concurrent_calls_are_all_served(allowed: Emulator, client: zeep.Client) -> None:
    records = [{"flat_id": f"F{i}"} for i in range(320)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda r: send(client, "reportFlatInfo", r), records, timeout=30))
    assert replies == [None] * 320
    assert len(allowed.service.stored("flat_info")) == len(allowed.receipts()) == 320


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="style"):
        Emulator(style="soap12")


def test_stop_refuses_further_connections_even_on_a_pooled_one(style: str) -> None:
    emu = Emulator(style=style, allow=["127.0.0.1"])
    emu.start()
    client = make_client(emu)
    assert send(client, "reportFlatInfo", FLAT) is None
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        send(client, "reportFlatInfo", FLAT)
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.wsdl_url, timeout=5)
    emu.stop()  # twice is harmless
    client.transport.session.close()


def test_stop_releases_a_stalled_call_at_once(allowed: Emulator) -> None:
    client = make_client(allowed, operation_timeout=30)
    allowed.set_fault("stall")
    errors: list[Exception] = []

    def call() -> None:
        try:
            send(client, "reportFlatInfo", FLAT)
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    deadline = time.monotonic() + 5
    while not allowed.receipts() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    allowed.stop()
    worker.join(timeout=5)
    assert time.monotonic() - started < 2 and not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)
    client.transport.session.close()


def test_serve_forever_returns_when_stopped_from_another_thread() -> None:
    emu = Emulator()
    emu.start()
    worker = threading.Thread(target=emu.serve_forever)
    worker.start()
    assert requests.get(emu.wsdl_url, timeout=5).status_code == 200
    emu.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_serve_forever_stops_cleanly_on_sigterm() -> None:
    code = "from hzsyncd.emulator import Emulator; e = Emulator(); e.start(); print(e.url)\n"
    code += "e.serve_forever()"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-u", "-c", code]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        # serve_forever installs its SIGTERM handler just after start(); wait until it serves.
        assert requests.get(url + "?wsdl", timeout=5).status_code == 200
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


# -- examples --------------------------------------------------------------------------------


def read_examples(table: str, delete: bool) -> list[dict[str, Any]]:
    folder = EXAMPLES / table / "delete" if delete else EXAMPLES / table
    records: list[dict[str, Any]] = []
    if not folder.is_dir():
        return records
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            document = json.loads(text)
            records += document if isinstance(document, list) else [document]
        elif path.suffix == ".ndjson":
            records += [json.loads(line) for line in text.splitlines() if line.strip()]
    return records


def test_examples_are_accepted_parents_first_except_the_documented_ones() -> None:
    replies: dict[str, list[str]] = {}
    with Emulator(allow=["127.0.0.1"]) as emu:
        for table in sorted(TABLES.values(), key=lambda t: t.rank):
            for delete in (False, True):
                method = f"{'delete' if delete else 'report'}{table.stem}"
                for record in read_examples(table.name, delete):
                    text = json.dumps(record, ensure_ascii=False)
                    reply = emu.service.call(method, text, "320000", "127.0.0.1")
                    replies.setdefault(reply, []).append(method)
    assert len(replies.pop("")) == 56
    assert replies == {
        '["flat_type取值范围应为[1, 2, 3]","org_property取值范围应为[1, 2, 3, 5, 9, ]"]': [
            "reportFlatInfo"
        ],
        '["org_property取值范围应为[1, 2, 3, 5, 9, ]"]': ["reportFlatInfo"],
        UNKNOWN_AREA: ["reportServiceItem"],
    }
