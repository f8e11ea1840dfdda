"""Stream the records of a dropped .json/.ndjson file with their line, never losing a good one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeAlias

import simplejson
from simplejson import JSONDecodeError

from hzsyncd.errors import IncompleteFile, InputError

Format = Literal["json", "ndjson"]
_Item: TypeAlias = "Record | BadRecord | None"  # None: a good record, when only checking

CHUNK = 64 * 1024
# Far below the recursion limit, so that what decodes also encodes whatever the caller's stack
# depth; real records nest two or three levels.
MAX_DEPTH = 256
TEXT_LIMIT = 2000
_DEPTH = f"nested deeper than {MAX_DEPTH} levels"
_BOM = b"\xef\xbb\xbf"
_CODECS = dict.fromkeys(("auto", "utf-8", "utf8", "utf-8-sig"), "utf-8") | {"gb18030": "gb18030"}
_SUFFIXES: dict[str, Format] = {".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson"}
_KINDS: dict[type, str] = {bool: "a boolean", str: "a string", list: "an array", type(None): "null"}
_where = re.compile(r": line \d+ column \d+.*", re.S)  # simplejson's, to be replaced by ours
_ws = re.compile(r"[ \t\r\n]*")
_tokens = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_surrogate = re.compile("[\ud800-\udfff]")
# What a truncated document leaves after the point where the decoder complains.
_PARTIAL = {
    "Expecting value": re.compile(r"-|t|tr|tru|f|fa|fal|fals|n|nu|nul"),
    "Expecting ',' delimiter": re.compile(r"[.eE][-+]?"),
    "Invalid \\uXXXX escape": re.compile(r"\\u[0-9a-fA-F]{0,3}"),
}


class Number(Decimal):
    """A JSON number Decimal would write differently (1e5 as 1E+5): str() gives its text back."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Number:
        try:
            self = super().__new__(cls, text)
        except InvalidOperation:  # an exponent beyond decimal's: the value saturates, text is kept
            sign, tiny = "-" if text[0] == "-" else "", re.search("[eE]-", text)
            self = super().__new__(cls, sign + ("0" if tiny else "Inf"))
        self.text = text
        return self

    def __str__(self) -> str:
        return self.text


def _fraction(text: str) -> Decimal:
    # simplejson writes a Decimal with str(): Decimal's own (fast) gives 30.10 and -0.0 back as
    # written, but not 1e5 or 0.0000001 (1E-7).
    return Number(text) if "e" in text or "E" in text or "0.000000" in text else Decimal(text)


def _integer(text: str) -> int | Number:
    # int() refuses over 4300 digits (CPython's guard) and would write "-0" back as "0".
    return Number(text) if len(text) > 4000 or text == "-0" else int(text)


# Duplicate keys: the last value wins, in the place of the first (as with json). NaN and Infinity
# are refused (simplejson >= 3.19). A \ud800 escape decodes to a lone surrogate, which no UTF-8
# can carry: such a record is bad.
_scan = simplejson.JSONDecoder(parse_float=_fraction, parse_int=_integer).scan_once


def _encoder(sort_keys: bool) -> Callable[[Any], str]:
    """Compact, non-ASCII kept, Decimals by str(); its C encoder made once, not once per call."""
    # namedtuple_as_object would look up `_asdict` on every Decimal, list and dict: +40% time.
    p = simplejson.JSONEncoder(separators=(",", ":"), ensure_ascii=False, use_decimal=True)
    p.sort_keys, p.namedtuple_as_object, memo = sort_keys, False, dict[Any, Any]()
    # The arguments of simplejson's JSONEncoder.iterencode (a self-test guards them): -2 us/call.
    args: tuple[Any, ...] = (None, p.default, simplejson.encoder.encode_basestring, None, ":")
    args += (",", p.sort_keys, p.skipkeys, p.allow_nan, memo, True, False, p.tuple_as_array)
    args += (None, p.item_sort_key, p.encoding, p.for_json, p.ignore_nan, Decimal, False)

    def encode(data: Any) -> str:
        if len(memo) > 4096:  # it keeps every key it meets
            memo.clear()
        return "".join(iterencode(data, 0))

    try:
        iterencode = simplejson.encoder.c_make_encoder(*args)
        sample = simplejson.loads('{"b":[1,"中\\n",1e5],"a":{"y":3.10,"x":null}}', use_decimal=True)
        return encode if encode(sample) == p.encode(sample) else p.encode
    except Exception:  # no C speed-ups, or other arguments: the public way
        return p.encode  # type: ignore[no-any-return]


# compact(data) makes the payload: compact JSON, non-ASCII kept, field order and numbers as written.
compact, _canonical = _encoder(sort_keys=False), _encoder(sort_keys=True)


def canonical_digest(data: dict[str, Any]) -> str:
    """SHA-256 hex of canonical JSON: sorted keys, compact, UTF-8 (UnicodeEncodeError if not)."""
    return hashlib.sha256(_canonical(data).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """A good record: its place among the file's records, its first line, data and digest."""

    index: int
    line: int
    data: dict[str, Any]
    digest: str

    @property
    def payload(self) -> str:
        """Made when asked for: a re-read that finds only duplicates never needs it."""
        return compact(self.data)


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that cannot be sent: why, the field if known, its text (cut) for the report."""

    index: int
    line: int
    reason: str
    field: str | None
    text: str


@dataclass(frozen=True)
class FileCheck:
    """What the first pass found; `records` counts good and bad records alike."""

    format: Format
    records: int
    bad: int
    encoding: str


def file_format(path: Path) -> Format | None:
    """The format by the name's suffix (.json; .ndjson or .jsonl; any case), else None."""
    return _SUFFIXES.get(path.suffix.lower())


def check_file(path: Path, encoding: str = "auto") -> FileCheck:
    """Read the file to its end, checking syntax and counting records, in bounded memory.

    Raises InputError "empty"; IncompleteFile when it ends mid-record; InputError with the line
    when a .json document is broken anywhere (bad .ndjson lines only count in `bad`); OSError.
    """
    reader, records, bad = _Pass(path, encoding), 0, 0
    for item in reader.items(full=False):
        records, bad = records + 1, bad + (item is not None)
    gb = reader.gb or reader.codec == "gb18030"
    found = "gb18030" if gb else "utf-8-sig" if reader.bom else "utf-8"
    return FileCheck(reader.fmt, records, bad, found)


def read_records(path: Path, encoding: str = "auto") -> Iterator[Record | BadRecord]:
    """Every record in order, in bounded memory; `encoding` as given to check_file.

    Meant to follow check_file: if the file is broken after all, it raises the same errors where
    it meets them, but yields an unterminated last .ndjson line as BadRecord "truncated last line".
    """
    return _Pass(path, encoding).items(full=True)  # type: ignore[return-value]


def _skip(text: str, i: int) -> int:
    m = _ws.match(text, i)  # always matches
    return m.end() if m else i


def _undecodable(what: str, data: bytes, pos: int) -> str:
    column = pos - data.rfind(b"\n", 0, pos)
    return f"not valid {what} (byte 0x{data[pos]:02x} at column {column})"


def _verdict(idx: int, line: int, data: Any, text: str, start: int, end: int, full: bool) -> _Item:
    """Record (None when only checking) or BadRecord for the value decoded from text[start:end]."""
    reason, field, digest = "", None, ""
    if type(data) is not dict:
        reason = f"not a JSON object but {_KINDS.get(type(data), 'a number')}"
    elif end - start > 2 * MAX_DEPTH and _too_deep(text, start, end):
        reason = _DEPTH
    elif full or text.find("\\ud", start, end) >= 0 or text.find("\\uD", start, end) >= 0:
        try:
            digest = canonical_digest(data)
        except UnicodeEncodeError:
            reason = "lone surrogate in a \\u escape: cannot be UTF-8"
            field = next(k for k, v in data.items() if _surrogate.search(_canonical({k: v})))
            field = field.encode("utf-8", "backslashreplace").decode()
    if reason:
        return BadRecord(idx, line, reason, field, text[start : min(end, start + TEXT_LIMIT)])
    return Record(idx, line, data, digest) if full else None


def _too_deep(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] nests deeper than MAX_DEPTH (found without recursion)."""
    if text.count("[", start, end) + text.count("{", start, end) <= MAX_DEPTH:
        return False  # the quick answer
    depth = 0
    for m in _tokens.finditer(text, start, end):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(m.group(), 0)  # strings count 0
        if depth > MAX_DEPTH:
            return True
    return False


class _Pass:
    """One pass over a file; then `codec`, `gb` and `bom` tell what it turned out to be."""

    def __init__(self, path: Path, encoding: str) -> None:
        fmt, codec = file_format(path), _CODECS.get(encoding.lower())
        if fmt is None:
            raise InputError(path, "not a .json, .ndjson or .jsonl file")
        if codec is None:
            raise ValueError(f"unknown encoding {encoding!r}: auto, utf-8 or gb18030")
        self.path, self.fmt, self.codec, self.auto = path, fmt, codec, encoding.lower() == "auto"
        self.bom = self.gb = False  # what the file turned out to be
        self.buf, self.pos, self.eof, self.container = "", 0, False, "object"  # .json
        self.nl = self.nl_pos = 0  # newlines in the text before buf[nl_pos]
        self.items = self.lines if fmt == "ndjson" else self.document

    def lines(self, full: bool) -> Iterator[_Item]:
        codec, index, line = self.codec, 0, 0
        with open(self.path, "rb") as f:
            for raw in f:
                line += 1
                body = raw.rstrip(b" \t\r\n")
                if line == 1 and codec == "utf-8" and body.startswith(_BOM):
                    self.bom, body = True, body[3:]
                if not body:
                    continue
                try:  # the common case quickly; anything unusual gets a careful look
                    text = body.decode(codec)
                    data, end = _scan(text, 0)
                except Exception:
                    text, end = "", -1
                if end == len(text):
                    yield _verdict(index, line, data, text, 0, end, full)
                else:
                    yield self.careful(index, line, raw, body, full)
                index += 1
        if index == 0:
            raise InputError(self.path, "empty")

    def careful(self, index: int, line: int, raw: bytes, body: bytes, full: bool) -> _Item:
        text, reason = body.decode(self.codec, "replace"), "NUL byte in line"
        if b"\0" not in body:
            text, reason = self.decode_line(body)
        if not reason:
            start = _skip(text, 0)
            try:
                data, end = _scan(text, start)
            except JSONDecodeError as e:
                reason = _where.sub(f" (column {e.pos + 1})", f"invalid JSON: {e}")
            except RecursionError:
                return BadRecord(index, line, _DEPTH, None, text[:TEXT_LIMIT])
            else:
                if end == len(text):
                    return _verdict(index, line, data, text, start, end, full)
                column = _skip(text, end) + 1
                reason = f"invalid JSON: extra data after the object (column {column})"
        if raw[-1:] != b"\n":  # the last line, and it does not decode: its writer is not done
            if not full:
                raise IncompleteFile(self.path, "ends mid-record: unterminated last line", line)
            reason = "truncated last line"
        return BadRecord(index, line, reason, None, text[:TEXT_LIMIT])

    def decode_line(self, body: bytes) -> tuple[str, str]:
        """The line's text and "", or its text with replacements and why it does not decode."""
        stops = []
        for codec in (self.codec, "gb18030") if self.auto else (self.codec,):
            try:
                text, self.gb = body.decode(codec), self.gb or codec == "gb18030"
                return text, ""
            except UnicodeDecodeError as e:
                stops.append(e.start)  # the encoding that got furthest found the bad byte
        what = "UTF-8 or GB18030" if self.auto else self.codec.upper()
        return body.decode(self.codec, "replace"), _undecodable(what, body, max(stops))

    def document(self, full: bool) -> Iterator[_Item]:
        with open(self.path, "rb") as self.f:
            while self.auto and (block := b"".join(self.f.readlines(4 * CHUNK))):
                try:  # the whole file is UTF-8, or else GB18030 (DESIGN §3): decide first
                    block.decode()
                except UnicodeDecodeError as e:
                    with suppress(UnicodeDecodeError):  # unless merely cut, or not GB18030 either
                        gb = e.end < len(block) and block.decode("gb18030")
                        self.codec = "gb18030" if gb else "utf-8"
                    break
            self.f.seek(0)
            if (c := self.next_char()) not in ("{", "["):
                where = self.line_at(self.pos) if c else 0
                raise InputError(self.path, "not a JSON object or array" if c else "empty", where)
            if c == "{":
                yield self.element(0, full)
            else:
                self.container, index, self.pos = "array", 0, self.pos + 1
                c = self.next_char()
                # An empty array is no error: a file of no records, which the pipeline is done with.
                while c != "]":
                    if not c:
                        raise self.unfinished()
                    yield self.element(index, full)
                    index += 1
                    if (c := self.next_char()) == ",":
                        self.pos += 1
                        if (c := self.next_char()) == "]":
                            raise self.invalid("trailing comma before ']'")
                    elif c and c != "]":
                        raise self.invalid("expecting ',' or ']' after an element")
                self.pos += 1
            if self.next_char():
                raise self.invalid("unexpected data after the end of the document")

    def fill(self, want: int = CHUNK) -> bool:
        """Drop the text consumed, add the next block; False at the end of the file."""
        if self.pos:
            self.line_at(self.pos)
            self.buf, self.nl_pos, self.pos = self.buf[self.pos :], self.nl_pos - self.pos, 0
        # Whole lines, so that no character is ever cut.
        if not (block := b"".join(self.f.readlines(max(want, CHUNK)))):
            self.eof = True
            return False
        if not self.buf and not self.nl and self.codec == "utf-8" and block.startswith(_BOM):
            self.bom, block = True, block[3:]
        try:
            self.buf += block.decode(self.codec)
        except UnicodeDecodeError as e:
            raise self.undecodable(block, e) from None
        return True

    def line_at(self, i: int) -> int:
        self.nl, self.nl_pos = self.nl + self.buf.count("\n", self.nl_pos, i), i
        return self.nl + 1

    def next_char(self) -> str:
        """Skip whitespace, reading on as needed: the next character, or "" at the end."""
        self.pos = _skip(self.buf, self.pos)
        while self.pos == len(self.buf) and self.fill():
            self.pos = _skip(self.buf, self.pos)
        return self.buf[self.pos : self.pos + 1]

    def element(self, index: int, full: bool) -> _Item:
        last = ("", 0)
        while True:
            start = self.pos
            try:
                data, end = _scan(self.buf, start)
            except JSONDecodeError as e:
                # Not all read yet, or broken? Read on (at least doubling: a big element costs
                # linear time) and see whether the complaint stays the same.
                seen = (e.msg, e.pos - start)
                if not self.eof and (seen != last or e.msg.startswith("Unterminated string")):
                    last = seen
                    self.fill(want=len(self.buf) - start)
                    continue
                raise self.broken(e, start) from None
            except RecursionError:
                raise InputError(self.path, _DEPTH, line=self.line_at(start)) from None
            self.pos = end
            return _verdict(index, self.line_at(start), data, self.buf, start, end, full)

    def broken(self, e: JSONDecodeError, start: int) -> InputError:
        tail = self.buf[e.pos :]
        if self.eof and (
            e.msg.startswith("Unterminated string")
            or not tail.strip(" \t\r\n")
            or any(e.msg.startswith(k) and p.fullmatch(tail) for k, p in _PARTIAL.items())
        ):
            self.pos = start
            return self.unfinished()
        self.pos = e.pos
        return self.invalid(_where.sub("", str(e)))

    def unfinished(self) -> IncompleteFile:
        reason = f"ends mid-record: unclosed {self.container}"
        return IncompleteFile(self.path, reason, line=self.line_at(self.pos))

    def invalid(self, what: str) -> InputError:
        reason = f"invalid JSON: {what} (column {self.pos - self.buf.rfind(chr(10), 0, self.pos)})"
        return InputError(self.path, reason, line=self.line_at(self.pos))

    def undecodable(self, block: bytes, e: UnicodeDecodeError) -> InputError:
        line = self.line_at(len(self.buf)) + block.count(b"\n", 0, e.start)
        if e.end == len(block) and ("end of data" in e.reason or "incomplete" in e.reason):
            return IncompleteFile(self.path, "ends mid-record: inside a character", line)
        what = "UTF-8 or GB18030" if self.auto else self.codec.upper()
        return InputError(self.path, _undecodable(what, block, e.start), line)
