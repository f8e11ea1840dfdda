"""A claimed file as the pipeline stages share it, and what became of it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hzsyncd.spool import DropFolder


@dataclass
class FileReport:
    """What became of one file, for `send`, the demo and the per-file log line."""

    path: Path
    table: str
    op: str
    records: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    disposition: str = "pending"  # done | failed | returned | incomplete | waiting
    dest: Path | None = None
    reason: str | None = None
    rejections: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Work:
    """A claimed file under processing."""

    file_id: int
    folder: DropFolder
    work: Path
    origin: Path
    name: str
    identity: tuple[int, int, int, int]
    report: FileReport
    sha256: str = ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def identity(path: Path) -> tuple[int, int, int, int]:
    st = path.lstat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
