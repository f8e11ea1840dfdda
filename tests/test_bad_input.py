"""Bad input through `send`: a clear error naming file, line and field; no good record lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Invoke, data_calls, drop, ndjson, write_config

from hzsyncd.emulator import Emulator


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(port=0, allow=["127.0.0.1"]) as emulator:
        yield emulator


@pytest.fixture
def config(tmp_path: Path, emu: Emulator) -> Path:
    return write_config(tmp_path, emu.wsdl_url, spool={"incomplete_seconds": 0})


def send(hzsyncd: Invoke, config: Path, path: Path) -> tuple[int, dict, str]:
    result = hzsyncd("send", "-c", config, "--json", path)
    return result.exit_code, json.loads(result.stdout)["files"][0], result.stderr


def errors_of(path: Path) -> list[dict]:
    report = path.parent / "failed" / (path.name + ".errors.ndjson")
    return [json.loads(line) for line in report.read_text("utf-8").splitlines()]


def delivered_keys(emu: Emulator, field: str = "org_id") -> list[str]:
    """Keys the server accepted, sorted: calls of different keys run concurrently."""
    return sorted(json.loads(c["json"])[field] for c in data_calls(emu) if c["response"] == "")


GOOD = [{"org_id": "E1", "org_name": "甲"}, {"org_id": "E2", "org_name": "乙"}]


def test_invalid_json_line_fails_that_line_only(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    text = ndjson(GOOD[:1]) + '{"org_id": "E9", "org_name": }\n' + ndjson(GOOD[1:])
    path = drop(spool, "org_info", "a.ndjson", text)

    code, report, stderr = send(hzsyncd, config, path)

    assert code == 1
    assert delivered_keys(emu) == ["E1", "E2"]
    [error] = errors_of(path)
    assert error["line"] == 2 and error["code"] == "invalid"
    assert "invalid JSON" in error["messages"][0]
    assert "a.ndjson" in stderr and "line 2" in stderr


def test_truncated_document_is_failed_whole_when_it_stays_truncated(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    path = drop(spool, "org_info", "t.json", '[{"org_id": "E1"},\n{"org_id": "E2", "org_na')

    code, report, stderr = send(hzsyncd, config, path)

    assert code == 1
    assert data_calls(emu) == []
    [error] = errors_of(path)
    assert "truncated" in error["messages"][0] and error["line"] == 2
    assert "t.json" in stderr


def test_truncated_document_is_left_alone_while_it_may_still_be_written(
    hzsyncd: Invoke, emu: Emulator, tmp_path: Path, spool: Path
) -> None:
    config = write_config(tmp_path, emu.wsdl_url)  # incomplete_seconds: the default 300
    path = drop(spool, "org_info", "t.json", '[{"org_id": "E1"},\n{"org_id": "E2", "org_na')

    code, report, _ = send(hzsyncd, config, path)

    assert code == 1 and report["disposition"] == "incomplete"
    assert path.exists() and data_calls(emu) == []


def test_array_of_non_objects_rejects_each_element_with_its_line(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    path = drop(
        spool, "org_info", "x.json", '[{"org_id": "E1"},\n"just text",\n[1, 2],\n{"org_id": "E2"}]'
    )

    code, _, _ = send(hzsyncd, config, path)

    assert code == 1
    assert delivered_keys(emu) == ["E1", "E2"]
    assert [(e["line"], e["code"]) for e in errors_of(path)] == [(2, "invalid"), (3, "invalid")]


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \r\n"])
def test_empty_file_goes_to_failed_with_reason_empty(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path, content: bytes
) -> None:
    path = drop(spool, "org_info", "e.ndjson", content)

    code, report, _ = send(hzsyncd, config, path)

    assert code == 1 and report["disposition"] == "failed"
    assert errors_of(path)[0]["messages"] == ["empty"]


def test_invalid_utf8_line_is_named_and_neighbours_are_sent(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    bad = b'{"org_id": "E9", "org_name": "\xff\xfe"}\n'
    path = drop(
        spool, "org_info", "u.ndjson", ndjson(GOOD[:1]).encode() + bad + ndjson(GOOD[1:]).encode()
    )

    code, _, _ = send(hzsyncd, config, path)

    assert code == 1
    assert delivered_keys(emu) == ["E1", "E2"]
    [error] = errors_of(path)
    assert error["line"] == 2 and "UTF-8" in error["messages"][0]


def test_gb18030_text_is_decoded_and_sent_as_unicode(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    path = drop(spool, "org_info", "g.ndjson", ndjson(GOOD).encode("gb18030"))

    code, _, _ = send(hzsyncd, config, path)

    assert code == 0
    assert sorted(json.loads(c["json"])["org_name"] for c in data_calls(emu)) == ["乙", "甲"]


def test_record_missing_its_key_field_is_refused_locally_naming_the_field(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    path = drop(spool, "org_info", "k.ndjson", ndjson([GOOD[0], {"org_name": "无键"}, GOOD[1]]))

    code, _, stderr = send(hzsyncd, config, path)

    assert code == 1
    assert delivered_keys(emu) == ["E1", "E2"]
    [error] = errors_of(path)
    assert (error["line"], error["field"]) == (2, "org_id")
    assert error["record"] == {"org_name": "无键"}
    assert "org_id" in stderr


def test_ten_megabyte_single_line_record_is_sent_whole(
    hzsyncd: Invoke, emu: Emulator, config: Path, spool: Path
) -> None:
    big = {"org_id": "BIG", "remark": "字" * (10 * 1024 * 1024 // 3)}
    path = drop(spool, "org_info", "big.ndjson", ndjson([GOOD[0], big, GOOD[1]]))

    code, _, _ = send(hzsyncd, config, path)

    assert code == 0
    assert delivered_keys(emu) == ["BIG", "E1", "E2"]
    assert max(len(c["json"]) for c in data_calls(emu)) > 3_000_000
