"""`hzsyncd validate`: read files as `send` would, check records and keys, send nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hzsyncd.config import Config
from hzsyncd.errors import InputError
from hzsyncd.reader import BadRecord, check_file, read_records
from hzsyncd.spool import Spool
from hzsyncd.tables import MissingKey, Table


@dataclass
class Validation:
    path: Path
    records: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_file(path: Path, table: Table | None, encoding: str) -> Validation:
    result = Validation(path)
    try:
        check_file(path, encoding)
    except InputError as exc:
        result.problems.append({"line": exc.line, "field": exc.field, "reason": exc.reason})
        return result
    for item in read_records(path, encoding):
        result.records += 1
        if isinstance(item, BadRecord):
            result.problems.append({"line": item.line, "field": item.field, "reason": item.reason})
        elif table is not None:
            try:
                table.key_of(item.data)
            except MissingKey as exc:
                result.problems.append({"line": item.line, "field": exc.field, "reason": str(exc)})
    return result


def validate_files(config: Config, paths: Sequence[Path], table: str | None) -> list[Validation]:
    spool = Spool(config.spool.root, config.tables)
    results = []
    for path in paths:
        chosen = config.tables.get(table) if table else None
        if chosen is None:
            folder = spool.folder_of(path.absolute())
            chosen = config.tables[folder.table.name] if folder else None
        results.append(validate_file(path, chosen, config.spool.encoding))
    return results


def print_validation(results: Sequence[Validation], as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"file": str(r.path), "records": r.records, "problems": r.problems}
                    for r in results
                ],
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    for result in results:
        verdict = "ok" if result.ok else f"{len(result.problems)} problem(s)"
        click.echo(f"{result.path}: {result.records} records, {verdict}")
        for problem in result.problems:
            field = f" {problem['field']}:" if problem["field"] else ""
            click.echo(f"{result.path}:{problem['line']}:{field} {problem['reason']}")
