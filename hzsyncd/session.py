"""What one run needs (spool, ledger, client, pipeline), opened alike by every command."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hzsyncd import spool as spool_mod
from hzsyncd.client import ReportClient
from hzsyncd.config import Config
from hzsyncd.errors import LedgerError
from hzsyncd.ledger import Ledger
from hzsyncd.lock import owner_lock
from hzsyncd.logs import event
from hzsyncd.pipeline import Pipeline
from hzsyncd.spool import DropFolder, Spool


@dataclass
class Session:
    config: Config
    spool: Spool
    ledger: Ledger
    client: ReportClient
    pipeline: Pipeline


def open_ledger(config: Config, spool: Spool, *, create_new: bool = False) -> Ledger:
    """Open the ledger, creating it only where that cannot lose the memory of what was sent.

    A missing ledger beside a spool that already has done/ files means the record of what was
    sent is gone: refuse, rather than resend everything (DESIGN §4).
    """
    path = config.ledger.path
    if not path.exists() and not create_new and spool.has_done_files():
        raise LedgerError(
            f"{path}: ledger not found, but {spool.root} has files in done/: records sent before "
            "would be sent again. Restore the ledger from a backup, or run "
            "`hzsyncd init --new-ledger` to start a new one on purpose."
        )
    return Ledger.open(path, create=True, synchronous=config.ledger.synchronous)


def make_client(config: Config) -> ReportClient:
    return ReportClient(
        config.service.wsdl,
        timeout=config.service.timeout,
        cache_dir=config.ledger.path.parent / "wsdl-cache",
        endpoint=config.service.endpoint or None,
    )


@contextmanager
def open_session(config: Config) -> Iterator[Session]:
    spool = Spool(config.spool.root, config.tables)
    with owner_lock(config.spool.root, config.ledger.path):
        yield from _opened(config, spool)


def _opened(config: Config, spool: Spool) -> Iterator[Session]:
    ledger = open_ledger(config, spool)
    try:
        client = make_client(config)
        pipeline = Pipeline(config, ledger, client)
        try:
            yield Session(config, spool, ledger, client, pipeline)
        finally:
            pipeline.close()
    finally:
        ledger.close()


def recover(session: Session, *, put_back: bool) -> None:
    """Reconcile the ledger with `.work/` after a crash (DESIGN §4).

    Files half moved are finished; claimed files are put back into their drop folder
    (`put_back`, for `send`) or left for the caller to resume (the daemon).
    """
    pipeline = session.pipeline
    for row in session.ledger.open_files():
        folder = _folder(session.spool, Path(row["drop_dir"]))
        if row["state"] == "returned" or folder is None:
            continue
        work_path = Path(row["work_path"]) if row["work_path"] else None
        if work_path is not None and work_path.exists():
            work = pipeline.resume(row, folder)
            if row["state"] == "moving":
                pipeline.finish(work)
            elif put_back:
                back = pipeline.put_back(work)
                event(
                    logging.INFO,
                    f"left in .work/ by an earlier run; put back as {back.name}",
                    file=row["name"],
                    table=row["table_name"],
                    op=row["op"],
                )
            continue
        moved = _find_moved(folder, row) if row["state"] == "moving" else None
        if moved is not None:
            pipeline.complete_move(int(row["id"]), moved)
            continue
        event(
            logging.ERROR,
            "in the ledger as being processed, but gone from .work/: moved or deleted by hand",
            file=row["name"],
            table=row["table_name"],
            op=row["op"],
        )
        session.ledger.update_file(
            int(row["id"]),
            state="final",
            disposition="missing",
            work_path=None,
            reason="gone from .work/ at start",
        )
        session.ledger.commit()
    _put_back_unknown(session)


def _put_back_unknown(session: Session) -> None:
    """Files in .work/ with no open claim in the ledger: a claim cut short between its move into
    .work/ and its commit (a ledger error, a crash). Back into the drop folder, to be taken anew."""
    known = {row["work_path"] for row in session.ledger.open_files() if row["work_path"]}
    for folder in session.spool.drop_folders():
        try:
            entries = sorted(folder.work_dir.iterdir())
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or str(entry) in known:
                continue
            back = spool_mod.move_no_overwrite(entry, folder.path)
            event(
                logging.WARNING,
                f"found in .work/ but not in the ledger; put back as {back.name}",
                file=entry.name,
                table=folder.table.name,
                op=folder.op.value,
            )


def _find_moved(folder: DropFolder, row: dict[str, object]) -> Path | None:
    """The file a crash left moved but not yet recorded: same device and inode."""
    candidates = [folder.failed_dir, *sorted((folder.path / "done").glob("*"), reverse=True)]
    for directory in candidates:
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            st = entry.lstat()
            if (st.st_dev, st.st_ino) == (row["dev"], row["ino"]):
                return entry
    return None


def _folder(spool: Spool, drop_dir: Path) -> DropFolder | None:
    for folder in spool.drop_folders():
        if folder.path == drop_dir:
            return folder
    return None
