"""The reader: records with file and line out of .json and .ndjson files, bad ones as data."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import simplejson

from hzsyncd import reader
from hzsyncd.errors import IncompleteFile, InputError
from hzsyncd.reader import (
    BadRecord,
    FileCheck,
    Record,
    canonical_digest,
    check_file,
    compact,
    file_format,
    read_records,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def both(path: Path, encoding: str = "auto") -> tuple[FileCheck, list[Record | BadRecord]]:
    """check_file and read_records over one file; they must agree on the count."""
    check = check_file(path, encoding)
    items = list(read_records(path, encoding))
    assert check.records == len(items)
    assert check.bad == sum(isinstance(item, BadRecord) for item in items)
    return check, items


def good(items: list[Record | BadRecord]) -> list[Record]:
    return [item for item in items if isinstance(item, Record)]


def bad(items: list[Record | BadRecord]) -> list[BadRecord]:
    return [item for item in items if isinstance(item, BadRecord)]


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read .json files a few lines at a time, so that elements span many blocks."""
    monkeypatch.setattr(reader, "CHUNK", 8)


# --- names and formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.json", "json"),
        ("A.JSON", "json"),
        ("a.ndjson", "ndjson"),
        ("a.JsonL", "ndjson"),
        ("a.json.tmp", None),
        ("a.txt", None),
        ("json", None),
    ],
)
def test_file_format_by_suffix_in_any_case(name: str, expected: str | None) -> None:
    assert file_format(Path(name)) == expected


def test_other_suffix_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a .json"):
        check_file(write(tmp_path, "a.csv", "x"))


def test_unknown_encoding_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="latin-1"):
        check_file(write(tmp_path, "a.json", "{}"), "latin-1")


# --- .json ---------------------------------------------------------------------------------


def test_pretty_printed_single_object_is_one_record(tmp_path: Path) -> None:
    path = write(
        tmp_path, "a.json", '\n{\n  "org_id": "E1",\n  "n": 2,\n  "x": [1, {"y": null}]\n}\n'
    )

    check, [record] = both(path)

    assert check == FileCheck("json", 1, 0, "utf-8")
    assert isinstance(record, Record)
    assert (record.index, record.line) == (0, 2)
    assert record.payload == '{"org_id":"E1","n":2,"x":[1,{"y":null}]}'


def test_array_elements_are_records_with_the_line_each_starts_on(
    tmp_path: Path, tiny_blocks: None
) -> None:
    path = write(
        tmp_path,
        "a.json",
        '[\n  {"a": 1},\n  {"b":\n    2\n  }, {"c": 3},\n\n  {\n"d": "x\\ny"}\n]\n',
    )

    check, items = both(path)

    assert check == FileCheck("json", 4, 0, "utf-8")
    assert [(r.index, r.line, r.payload) for r in good(items)] == [
        (0, 2, '{"a":1}'),
        (1, 3, '{"b":2}'),
        (2, 5, '{"c":3}'),
        (3, 7, '{"d":"x\\ny"}'),
    ]


def test_line_numbers_stay_exact_over_many_blocks(tmp_path: Path, tiny_blocks: None) -> None:
    elements = [json.dumps({"i": i, "s": "中" * (i % 7)}, indent=i % 3 or None) for i in range(300)]
    text = "[" + ",\n".join(elements) + "]"
    expected = [text.count("\n", 0, text.index(e)) + 1 for e in elements]

    _, items = both(write(tmp_path, "a.json", text))

    assert [r.line for r in good(items)] == expected
    assert [r.data["i"] for r in good(items)] == list(range(300))


def test_empty_array_is_a_file_of_no_records(tmp_path: Path) -> None:
    assert both(write(tmp_path, "a.json", " [ \n ] \n")) == (FileCheck("json", 0, 0, "utf-8"), [])


def test_array_of_non_objects_gives_bad_records_with_lines_and_kinds(tmp_path: Path) -> None:
    content = '[{"a": 1},\n"text",\n[1, 2], 3.5,\nnull, true, {"b": 2}]'

    check, items = both(write(tmp_path, "a.json", content))

    assert (check.records, check.bad) == (7, 5)
    assert [(b.index, b.line, b.reason, b.text) for b in bad(items)] == [
        (1, 2, "not a JSON object but a string", '"text"'),
        (2, 3, "not a JSON object but an array", "[1, 2]"),
        (3, 3, "not a JSON object but a number", "3.5"),
        (4, 4, "not a JSON object but null", "null"),
        (5, 4, "not a JSON object but a boolean", "true"),
    ]
    assert [r.index for r in good(items)] == [0, 6]


@pytest.mark.parametrize(
    "content",
    ['[{"a": 1}, {"b": 2', "[", '[{"a": 1},', '[{"a": 1}\n', '{"a": [1, 2', '[{"a": "abc'],
)
def test_unfinished_json_document_is_incomplete(tmp_path: Path, content: str) -> None:
    with pytest.raises(IncompleteFile, match="ends mid-record"):
        check_file(write(tmp_path, "a.json", content))


def test_every_cut_of_a_json_document_is_incomplete(tmp_path: Path, tiny_blocks: None) -> None:
    document = (
        '[\n {"s": "a\\"b\\\\c\\u4e2d\\ud83d\\ude00", "n": -12.5e+3, "i": 10,\n'
        '  "t": true, "f": false, "z": null, "l": [1, [], {}], "o": {"k": "中文"}},\n'
        ' {"e": 1E-7}\n]'
    )
    assert check_file(write(tmp_path, "a.json", document)).records == 2
    for cut in range(1, len(document)):
        path = write(tmp_path, "a.json", document[:cut])
        with pytest.raises(IncompleteFile):
            check_file(path)


def test_truncated_document_names_the_line_of_the_unfinished_record(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", '[{"org_id": "E1"},\n{"org_id": "E2", "org_na')

    with pytest.raises(IncompleteFile) as caught:
        check_file(path)

    assert caught.value.line == 2
    assert str(caught.value).startswith("t.json:2: ends mid-record")


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('[{"a": 1}]\n{"b": 2}', 2, "unexpected data after the end of the document"),
        ('{"a": 1}\n\n x', 3, "unexpected data after the end of the document"),
        ('[{"a": 1},\n {"b": 2} {"c": 3}]', 2, "expecting ',' or ']'"),
        ('[{"a": 1},\n {"b": 2},\n]', 3, "trailing comma"),
        ('[{"a": 1},\n {"b" 2}]', 2, "Expecting ':' delimiter (column 6)"),
        ('[\n{"a": 1},\n{"b": tru}]', 3, "Expecting value"),
        ('[{"a": NaN}]', 1, "Expecting value"),
        ('[{"a": "\\x"}]', 1, "Invalid \\X escape sequence 'x'"),
        ('[{"a": "tab\there"}]', 1, "Invalid control character"),
    ],
)
def test_broken_json_document_is_an_input_error_naming_file_and_line(
    tmp_path: Path, content: str, line: int, reason: str
) -> None:
    path = write(tmp_path, "b.json", content)

    with pytest.raises(InputError) as caught:
        check_file(path)

    assert type(caught.value) is InputError
    assert caught.value.line == line
    assert reason in caught.value.reason and "invalid JSON" in caught.value.reason
    assert str(caught.value).startswith(f"b.json:{line}: ")


@pytest.mark.parametrize("content", ['"text"', "12", "true", "null", "\n  [1] x", "x"])
def test_top_level_other_than_object_or_array_is_an_input_error(
    tmp_path: Path, content: str
) -> None:
    with pytest.raises(InputError) as caught:
        check_file(write(tmp_path, "a.json", content))

    assert type(caught.value) is InputError and caught.value.line >= 1


def test_read_records_raises_where_a_broken_document_breaks(tmp_path: Path) -> None:
    items = read_records(write(tmp_path, "a.json", '[{"a": 1}, {"b": 2} x]'))

    assert isinstance(next(items), Record)
    with pytest.raises(InputError, match="expecting ','"):
        list(items)


# --- .ndjson -------------------------------------------------------------------------------


def test_ndjson_skips_blank_lines_and_tolerates_crlf_and_bom(tmp_path: Path) -> None:
    content = b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \t\n{"b": "\xe4\xb8\xad"}\r\n\n  {"c": 3}  \r\n'

    check, items = both(write(tmp_path, "a.ndjson", content))

    assert check == FileCheck("ndjson", 3, 0, "utf-8-sig")
    assert [(r.index, r.line, r.payload) for r in good(items)] == [
        (0, 1, '{"a":1}'),
        (1, 4, '{"b":"中"}'),
        (2, 6, '{"c":3}'),
    ]


def test_json_with_bom_is_utf8_sig_and_that_encoding_reads_it_again(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", b'\xef\xbb\xbf{"a": "\xe4\xb8\xad"}')

    check, [record] = both(path)

    assert check.encoding == "utf-8-sig"
    assert [r.data for r in read_records(path, check.encoding)] == [record.data] == [{"a": "中"}]


def test_unknown_encoding_is_refused_when_read_records_is_called(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        read_records(write(tmp_path, "a.ndjson", "{}"), "latin-1")


def test_jsonl_is_ndjson(tmp_path: Path) -> None:
    assert check_file(write(tmp_path, "a.jsonl", '{"a": 1}\n{"b": 2}\n')).records == 2


def test_invalid_line_among_good_ones_is_a_bad_record_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    content = '{"a": 1}\n{"a": 2, "b": 3\n{"a": 3}\n{"a": 4} {"a": 5}\n[1]\n{"a": 6}\n'

    check, items = both(write(tmp_path, "a.ndjson", content))

    assert (check.records, check.bad) == (6, 3)
    assert [r.data["a"] for r in good(items)] == [1, 3, 6]
    assert [(b.index, b.line, b.reason) for b in bad(items)] == [
        (1, 2, "invalid JSON: Expecting ',' delimiter or '}' (column 16)"),
        (3, 4, "invalid JSON: extra data after the object (column 10)"),
        (4, 5, "not a JSON object but an array"),
    ]
    assert bad(items)[0].text == '{"a": 2, "b": 3'


def test_unterminated_last_line_that_does_not_parse_is_incomplete(tmp_path: Path) -> None:
    path = write(tmp_path, "a.ndjson", '{"a": 1}\n{"a": 2, "b"')

    with pytest.raises(IncompleteFile) as caught:
        check_file(path)

    assert caught.value.line == 2
    *_, last = read_records(path)
    assert isinstance(last, BadRecord) and (last.line, last.reason) == (2, "truncated last line")


def test_complete_last_line_without_newline_is_a_record(tmp_path: Path) -> None:
    check, items = both(write(tmp_path, "a.ndjson", '{"a": 1}\n{"a": 2}'))

    assert (check.records, check.bad) == (2, 0)
    assert [r.data["a"] for r in good(items)] == [1, 2]


def test_every_cut_of_the_last_ndjson_line_is_incomplete(tmp_path: Path) -> None:
    line = '{"s": "a\\"中", "n": [1.5, true, null], "o": {"k": -1}}'
    for cut in range(1, len(line)):
        with pytest.raises(IncompleteFile):
            check_file(write(tmp_path, "a.ndjson", '{"a": 1}\n' + line[:cut]))


# --- both formats --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.json", "a.ndjson"])
@pytest.mark.parametrize("content", [b"", b"  \n\n\t \r\n", b"\xef\xbb\xbf\n"])
def test_empty_or_whitespace_only_file_is_an_input_error_empty(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = write(tmp_path, name, content)

    with pytest.raises(InputError) as caught:
        check_file(path)

    assert type(caught.value) is InputError and caught.value.reason == "empty"


@pytest.mark.parametrize("name", ["a.json", "a.ndjson"])
def test_chinese_text_comes_out_intact(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '{"org_name": "江苏省中小企业服务中心", "escaped": "\\u4e2d"}\n')

    [record] = good(both(path)[1])

    assert record.data == {"org_name": "江苏省中小企业服务中心", "escaped": "中"}
    assert record.payload == '{"org_name":"江苏省中小企业服务中心","escaped":"中"}'


@pytest.mark.parametrize("name", ["a.json", "a.ndjson"])
def test_numbers_keep_the_text_they_were_written_with(tmp_path: Path, name: str) -> None:
    numbers = "30.10, 1e5, -0.0, 1E-7, 0.0000001, 2.50E+10, -0, 7, 123456789012345678901234567890"
    huge = "1" * 5000 + ", 1e999999999999999999999, -1e-999999999999999999999"
    path = write(tmp_path, name, f'{{"n": [{numbers}, {huge}], "score": 30.10}}\n')

    [record] = good(both(path)[1])

    assert (
        record.payload
        == f'{{"n":[{numbers.replace(", ", ",")},{huge.replace(", ", ",")}],"score":30.10}}'
    )
    assert record.data["score"] == Decimal("30.1") and str(record.data["score"]) == "30.10"
    assert record.data["n"][7] == 7 and type(record.data["n"][7]) is int


@pytest.mark.parametrize(
    "text", ["0.5", "-0.0", "30.10", "1.000", "0.000001", "0.0000001", "1e5", "1E+5", "-2.5e-3"]
)
def test_every_fraction_writes_back_as_written(text: str) -> None:
    value = reader._scan(text, 0)[0]

    assert isinstance(value, Decimal) and str(value) == text and compact([value]) == f"[{text}]"


def test_any_number_text_writes_back_as_written() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        text = ("-" if rng.random() < 0.3 else "") + (digits.lstrip("0") or "0")
        if rng.random() < 0.7:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.3:
            text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 400))
        value = reader._scan(f"[{text}]", 0)[0][0]
        assert compact([value]) == f"[{text}]", text


def test_payload_keeps_field_order_and_digest_does_not_depend_on_it(tmp_path: Path) -> None:
    path = write(
        tmp_path, "a.ndjson", '{"b": 1, "a": 30.10}\n{"a": 30.10, "b": 1}\n{"a": 30.1, "b": 1}\n'
    )

    first, second, third = good(both(path)[1])

    assert (first.payload, second.payload) == ('{"b":1,"a":30.10}', '{"a":30.10,"b":1}')
    assert first.digest == second.digest != third.digest


def test_digest_is_sha256_of_sorted_compact_utf8_json() -> None:
    data = reader._scan('{"z": {"y": 1, "x": [30.10, "中"]}, "a": null}', 0)[0]
    canonical = '{"a":null,"z":{"x":[30.10,"中"],"y":1}}'

    assert canonical_digest(data) == hashlib.sha256(canonical.encode()).hexdigest()
    assert (
        canonical_digest(data)
        == hashlib.sha256(
            simplejson.dumps(
                data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, use_decimal=True
            ).encode()
        ).hexdigest()
    )


def test_c_speedups_are_used_for_decoding_and_encoding() -> None:
    assert type(reader._scan).__module__ == "simplejson._speedups"
    assert compact.__name__ == reader._canonical.__name__ == "encode"  # not the fallback


def test_duplicate_keys_keep_the_last_value(tmp_path: Path) -> None:
    [record] = good(both(write(tmp_path, "a.ndjson", '{"a": 1, "b": 2, "a": 3}\n'))[1])

    assert record.payload == '{"a":3,"b":2}'


@pytest.mark.parametrize("name", ["a.json", "a.ndjson"])
def test_lone_surrogate_is_a_bad_record_naming_the_field(tmp_path: Path, name: str) -> None:
    content = '[{"ok": "\\ud83d\\ude00"},\n{"a": 1, "name": "x\\ud800"}]'
    if name.endswith(".ndjson"):
        content = '{"ok": "\\ud83d\\ude00"}\n{"a": 1, "name": "x\\ud800"}\n'

    check, [ok, broken] = both(write(tmp_path, name, content))

    assert check.bad == 1 and isinstance(ok, Record) and ok.data["ok"] == "😀"
    assert isinstance(broken, BadRecord)
    assert (broken.line, broken.field) == (2, "name") and "surrogate" in broken.reason


def test_lone_surrogate_deep_inside_names_the_top_level_field(tmp_path: Path) -> None:
    path = write(tmp_path, "a.ndjson", '{"a": 1, "org": {"names": ["ok", "\\udc00"]}}\n')

    _, [broken] = both(path)

    assert isinstance(broken, BadRecord) and broken.field == "org"


def test_nul_byte_in_ndjson_line_is_a_bad_record(tmp_path: Path) -> None:
    _, [first, second] = both(write(tmp_path, "a.ndjson", b'{"a": "x\x00"}\n{"a": 1}\n'))

    assert isinstance(first, BadRecord) and first.reason == "NUL byte in line"
    assert isinstance(second, Record)


def test_nul_byte_in_json_document_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="control character") as caught:
        check_file(write(tmp_path, "a.json", b'[{"a": 1},\n{"a": "\x00"}]'))

    assert caught.value.line == 2


def test_deep_nesting_is_a_bad_record_not_a_crash_in_ndjson(tmp_path: Path) -> None:
    content = "[" * 100_000 + "\n" + '{"a": ' + "[" * 300 + "]" * 300 + "}\n" + '{"a": 1}\n'

    check, items = both(write(tmp_path, "a.ndjson", content))

    assert [(b.line, b.reason) for b in bad(items)] == [
        (1, "nested deeper than 256 levels"),
        (2, "nested deeper than 256 levels"),
    ]
    assert [r.line for r in good(items)] == [3]


def test_nesting_up_to_the_limit_is_fine(tmp_path: Path) -> None:
    deep = '{"a": ' + "[" * 255 + "]" * 255 + "}"
    wide = '{"a": [' + ", ".join(["[[1]]"] * 500) + "]}"

    _, items = both(write(tmp_path, "a.ndjson", f"{deep}\n{wide}\n"))

    assert len(good(items)) == 2


@pytest.mark.parametrize("content", ["[" + "[" * 100_000, "[" + "[" * 100_000 + "]" * 100_001])
def test_deep_nesting_in_json_document_is_an_input_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(InputError, match="nested deeper"):
        check_file(write(tmp_path, "a.json", content))


@pytest.mark.parametrize("name", ["a.json", "a.ndjson"])
def test_ten_megabyte_single_line_record_is_read_whole(tmp_path: Path, name: str) -> None:
    big = "中" * 3_500_000  # 10.5 MB in UTF-8
    path = write(tmp_path, name, json.dumps({"a": 1, "big": big}, ensure_ascii=False) + "\n")

    _, [record] = both(path)

    assert isinstance(record, Record) and record.data["big"] == big


def test_json_element_spanning_many_blocks_is_read_whole(tmp_path: Path, tiny_blocks: None) -> None:
    element = json.dumps({"k": list(range(2000)), "s": "x" * 100_000}, indent=1)
    path = write(tmp_path, "a.json", f"[{element},\n{element}]")

    _, items = both(path)

    assert [r.line for r in good(items)] == [1, element.count("\n") + 2]


def test_huge_integer_is_kept_by_check_file_as_by_read_records(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", '[{"n": ' + "9" * 5000 + "}]")

    _, [record] = both(path)

    assert isinstance(record, Record) and record.payload == '{"n":' + "9" * 5000 + "}"


# --- encodings -----------------------------------------------------------------------------

GB_LINE = '{"org_name": "江苏省中小企业"}'.encode("gb18030")


def test_gb18030_ndjson_is_decoded_under_auto(tmp_path: Path) -> None:
    check, [record] = both(write(tmp_path, "a.ndjson", GB_LINE + b"\n"))

    assert check.encoding == "gb18030"
    assert isinstance(record, Record) and record.data == {"org_name": "江苏省中小企业"}


def test_gb18030_json_is_decoded_under_auto(tmp_path: Path, tiny_blocks: None) -> None:
    content = b'[{"a": "ascii only"},\n' + GB_LINE + b"]"

    check, [_, record] = both(write(tmp_path, "a.json", content))

    assert check.encoding == "gb18030"
    assert isinstance(record, Record) and record.data == {"org_name": "江苏省中小企业"}


def test_ndjson_lines_are_decoded_each_in_its_own_encoding(tmp_path: Path) -> None:
    content = '{"org_name": "中"}\n'.encode() + GB_LINE + b"\n"

    check, items = both(write(tmp_path, "a.ndjson", content))

    assert check.encoding == "gb18030"
    assert [r.data["org_name"] for r in good(items)] == ["中", "江苏省中小企业"]


def test_explicit_gb18030_reads_gb18030(tmp_path: Path) -> None:
    for name in ("a.json", "a.ndjson"):
        check, [record] = both(write(tmp_path, name, GB_LINE + b"\n"), "gb18030")
        assert check.encoding == "gb18030" and isinstance(record, Record)


def test_explicit_utf8_refuses_gb18030_bytes(tmp_path: Path) -> None:
    _, [record] = both(write(tmp_path, "a.ndjson", GB_LINE + b"\n"), "utf-8")
    assert isinstance(record, BadRecord)
    assert record.reason == "not valid UTF-8 (byte 0xbd at column 15)"

    with pytest.raises(InputError, match="not valid UTF-8 \\(byte 0xbd at column 15\\)"):
        check_file(write(tmp_path, "a.json", b"\n" + GB_LINE), "utf-8")


def test_bytes_neither_utf8_nor_gb18030_are_a_bad_record_in_ndjson(tmp_path: Path) -> None:
    content = b'{"a": 1}\n{"a": "\xff"}\n{"a": "\xe4\xb8\xad \xff"}\n{"a": 3}\n'

    check, items = both(write(tmp_path, "a.ndjson", content))

    assert [(b.line, b.reason) for b in bad(items)] == [
        (2, "not valid UTF-8 or GB18030 (byte 0xff at column 8)"),
        (3, "not valid UTF-8 or GB18030 (byte 0xff at column 12)"),
    ]
    assert [r.data["a"] for r in good(items)] == [1, 3]


@pytest.mark.parametrize("blocks", [False, True])
def test_bytes_neither_utf8_nor_gb18030_are_an_input_error_in_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: bool
) -> None:
    if blocks:
        monkeypatch.setattr(reader, "CHUNK", 8)
    content = '[{"a": "中文"},\n{"b": 2},\n{"c": "中'.encode() + b'\xff"}]'

    with pytest.raises(InputError) as caught:
        check_file(write(tmp_path, "a.json", content))

    assert caught.value.line == 3
    assert caught.value.reason == "not valid UTF-8 or GB18030 (byte 0xff at column 11)"


def test_json_cut_inside_a_character_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(IncompleteFile):
        check_file(write(tmp_path, "a.json", '[{"a": "中'.encode()[:-1]))


# --- memory --------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (big) pytest process.
PEAK = """
import re, sys
from pathlib import Path
from hzsyncd.reader import check_file, read_records
path = Path(sys.argv[1])
check = check_file(path)
assert sum(1 for _ in read_records(path)) == check.records
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def peak_rss_kib(path: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "count"), [("big.ndjson", 1_000_000), ("big.json", 300_000)])
def test_memory_stays_bounded_however_many_records(tmp_path: Path, name: str, count: int) -> None:
    line = '{"org_id": "E%07d", "org_name": "江苏省某某科技服务有限公司", "score": 30.10, "n": 1}'
    small, large = tmp_path / ("small" + name[3:]), tmp_path / name
    separator = "\n" if name.endswith(".ndjson") else ",\n"
    for path, records in ((small, 100), (large, count)):
        with path.open("w", encoding="utf-8") as out:
            out.write("" if separator == "\n" else "[")
            out.write(separator.join(line % i for i in range(records)))
            out.write("\n" if separator == "\n" else "]\n")

    small_kib, large_kib = peak_rss_kib(small), peak_rss_kib(large)

    print(f"{name}: peak RSS {small_kib} KiB for 100 records, {large_kib} KiB for {count:,}")
    assert large_kib <= small_kib * 1.5 + 4096
