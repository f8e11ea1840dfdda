"""Shared fixtures: a real emulator over HTTP on loopback, a spool and a config on tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import simplejson
from click.testing import CliRunner, Result

from hzsyncd.cli import main
from hzsyncd.emulator import Emulator

STYLES = ("rpc", "document")


@pytest.fixture(params=STYLES)
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def emulator(tmp_path: Path, style: str) -> Iterator[Emulator]:
    """An emulator that allows 127.0.0.1, in each WSDL style."""
    with Emulator(
        port=0, style=style, allow=["127.0.0.1"], receipts=tmp_path / "receipts.ndjson"
    ) as emu:
        yield emu


def write_config(tmp_path: Path, wsdl: str, **sections: dict[str, Any]) -> Path:
    """A config file for a spool and a ledger under tmp_path, pointing at `wsdl`."""
    values: dict[str, dict[str, Any]] = {
        "service": {"wsdl": wsdl, "area_code": "320000", "timeout": 5, "max_in_flight": 8},
        "account": {"user_id": "demo", "password": "demo"},
        "spool": {"root": str(tmp_path / "spool"), "settle_seconds": 0},
        "ledger": {"path": str(tmp_path / "var" / "ledger.db")},
        "retry": {"backoff_initial": 1, "backoff_max": 4},
        "log": {"target": "stderr", "level": "info"},
    }
    for name, extra in sections.items():
        values.setdefault(name, {}).update(extra)
    lines = []
    for name, keys in values.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    path = tmp_path / "hzsyncd.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path, emulator: Emulator) -> Path:
    path = write_config(tmp_path, emulator.wsdl_url)
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    root.mkdir(exist_ok=True)
    return root


Invoke = Callable[..., Result]


@pytest.fixture
def hzsyncd() -> Invoke:
    """Run the hzsyncd command in-process: hzsyncd("send", "-c", cfg, path, ...)."""

    def invoke(*args: object) -> Result:
        runner = CliRunner()
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def drop(root: Path, table: str, name: str, content: str | bytes, delete: bool = False) -> Path:
    """Write a file into a table's drop folder (report or delete)."""
    folder = root / table / ("delete" if delete else "")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def dumps(record: Any, **kwargs: Any) -> str:
    """JSON text with Decimal numbers written as given (Decimal("30.10") stays 30.10)."""
    return simplejson.dumps(record, ensure_ascii=False, use_decimal=True, **kwargs)


def ndjson(records: list[dict[str, Any]]) -> str:
    return "".join(dumps(r, separators=(",", ":")) + "\n" for r in records)


def data_calls(emu: Emulator) -> list[dict[str, Any]]:
    """Receipts of data calls that reached the service (not injected faults)."""
    return [r for r in emu.receipts() if "json" in r and r.get("fault") is None]
