"""The watcher: real inotify and polling on real files, every wait bounded by a deadline."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from hzsyncd.spool import Spool
from hzsyncd.tables import TABLES, Operation
from hzsyncd.watch import Candidate, Watcher, choose_observer

MakeWatcher = Callable[..., Watcher]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", TABLES)
    spool.init()
    return spool


@pytest.fixture
def make_watcher(spool: Spool) -> Iterator[MakeWatcher]:
    """Start watchers on the spool; each is stopped at teardown and must leave no thread."""
    before = set(threading.enumerate())
    watchers: list[Watcher] = []

    def make(**options: object) -> Watcher:
        settings: dict[str, object] = {"settle_seconds": 0.1, "rescan_seconds": 0.05}
        settings.update(options)
        watcher = Watcher(spool, **settings)  # type: ignore[arg-type]
        watcher.start()
        watchers.append(watcher)
        return watcher

    yield make
    for watcher in watchers:
        watcher.stop()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Records of the hzsyncd logger, which may not propagate (logs.setup() turns that off)."""
    logger = logging.getLogger("hzsyncd")
    handler = ListHandler()
    found = handler.records
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield found
    logger.removeHandler(handler)
    logger.setLevel(level)


def collect(
    watcher: Watcher, seconds: float, until: Callable[[list[Candidate]], bool] | None = None
) -> list[Candidate]:
    """Everything ready() gives within `seconds`, or until `until(found)` holds."""
    found: list[Candidate] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        watcher.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        found += watcher.ready()
        if until is not None and until(found):
            break
    return found


def first(watcher: Watcher, seconds: float = 3.0) -> list[Candidate]:
    return collect(watcher, seconds, until=bool)


def names(found: list[Candidate]) -> list[str]:
    return [c.name for c in found]


def drop_dir(spool: Spool, table: str = "org_info") -> Path:
    return spool.root / table


def test_a_file_written_slowly_in_place_is_ready_right_after_close_not_before(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    # Rescans run every 0.05 s and the pause is longer than settle_seconds (0.1): only the
    # missing close keeps the file back.
    watcher = make_watcher(observer="inotify")
    assert watcher.observer_kind == "inotify"
    path = drop_dir(spool) / "slow.json"
    with open(path, "w") as out:
        out.write('[{"org_id": "1"},')
        out.flush()
        assert collect(watcher, 0.3) == []
        # A reader's close (IN_CLOSE_NOWRITE) says nothing about the writer.
        assert path.read_text().startswith("[")
        assert collect(watcher, 0.2) == []
        out.write('{"org_id": "2"}]')
    closed = time.monotonic()
    found = first(watcher)
    assert names(found) == ["slow.json"]
    assert time.monotonic() - closed < 1.0
    assert found[0].path == path and found[0].folder.table.name == "org_info"


def test_a_file_written_as_tmp_then_renamed_is_ready_once_and_the_tmp_never(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    watcher = make_watcher(observer="inotify", settle_seconds=30)  # the event alone does it
    tmp = drop_dir(spool) / "x.tmp"
    tmp.write_text('{"org_id": "1"}')
    assert collect(watcher, 0.15) == []
    tmp.rename(drop_dir(spool) / "x.json")
    assert names(first(watcher)) == ["x.json"]
    assert collect(watcher, 0.2) == []


def test_a_file_moved_in_from_another_folder_is_ready(
    spool: Spool, tmp_path: Path, make_watcher: MakeWatcher
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y.ndjson").write_text('{"org_id": "1"}\n')
    watcher = make_watcher(observer="inotify", settle_seconds=30)
    assert collect(watcher, 0.2) == []
    (outside / "y.ndjson").rename(drop_dir(spool) / "y.ndjson")
    assert names(first(watcher)) == ["y.ndjson"]


def test_a_file_moved_between_drop_folders_is_ready_in_its_new_folder(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    (drop_dir(spool) / "m.json.part").write_text('{"org_id": "1"}')
    watcher = make_watcher(observer="inotify", settle_seconds=30)
    (drop_dir(spool) / "m.json.part").rename(drop_dir(spool) / "delete" / "m.json")
    found = first(watcher)
    assert names(found) == ["m.json"] and found[0].folder.op == "delete"


def test_a_hard_link_is_ready_after_settling(
    spool: Spool, tmp_path: Path, make_watcher: MakeWatcher
) -> None:
    # link() gives IN_CREATE and no close: the settle rule has to take it.
    (tmp_path / "l.json").write_text('{"org_id": "1"}')
    os.utime(tmp_path / "l.json", (time.time() - 60, time.time() - 60))
    watcher = make_watcher(observer="inotify")
    os.link(tmp_path / "l.json", drop_dir(spool) / "l.json")
    assert names(first(watcher)) == ["l.json"]


def test_a_file_present_before_start_is_found_by_the_first_scan_after_settling(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    (drop_dir(spool, "flat_info") / "old.json").write_text('{"flat_id": "1"}')
    started = time.monotonic()
    watcher = make_watcher(settle_seconds=0.2, rescan_seconds=60)
    found = first(watcher)
    assert names(found) == ["old.json"]
    assert time.monotonic() - started >= 0.2


def test_with_polling_a_file_is_ready_only_after_settling(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    watcher = make_watcher(observer="polling", settle_seconds=0.2, rescan_seconds=60)
    assert watcher.observer_kind == "polling"
    assert collect(watcher, 0.1) == []
    (drop_dir(spool) / "p.json").write_text('{"org_id": "1"}')
    written = time.monotonic()
    assert names(first(watcher)) == ["p.json"]
    assert time.monotonic() - written >= 0.2


def test_a_file_growing_across_rescans_is_ready_only_once_it_stops_for_settle_seconds(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    # Polling sees no closes: each append, by a slow exporter that reopens the file, restarts
    # the settle.
    path = drop_dir(spool) / "grow.ndjson"
    watcher = make_watcher(observer="polling", settle_seconds=0.3, rescan_seconds=0.05)
    for n in range(5):
        with open(path, "a") as out:
            out.write(f'{{"org_id": "{n}"}}\n')
        last_write = time.monotonic()
        assert collect(watcher, 0.1) == []
    assert names(first(watcher)) == ["grow.ndjson"]
    assert time.monotonic() - last_write >= 0.3


def test_a_file_growing_through_one_open_descriptor_stays_held_across_rescans(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    path = drop_dir(spool) / "held.ndjson"
    watcher = make_watcher(observer="inotify")
    with open(path, "w") as out:
        for n in range(3):
            out.write(f'{{"org_id": "{n}"}}\n')
            out.flush()
            assert collect(watcher, 0.1) == []
        assert collect(watcher, 0.3) == []  # unchanged longer than settle_seconds, still open
    assert names(first(watcher)) == ["held.ndjson"]


def test_ignored_names_are_never_ready_and_other_names_are_logged_once(
    spool: Spool, make_watcher: MakeWatcher, records: list[logging.LogRecord]
) -> None:
    folder = drop_dir(spool)
    (folder / "before.csv").write_text("a,b\n")
    watcher = make_watcher(observer="inotify")
    for name in (".hidden.json", "a.tmp", "b.json.part", "c.json~", "D.JSON.TMP", "notes.txt"):
        (folder / name).write_text("{}")
    (folder / "archive").mkdir()
    (folder / "E.JSONL").write_text('{"org_id": "1"}\n')  # accepted in any case
    assert names(collect(watcher, 0.3)) == ["E.JSONL"]
    logged = [r for r in records if r.getMessage().startswith("ignored: not a .json")]
    assert sorted(vars(r)["HZSYNCD_FILE"] for r in logged) == ["before.csv", "notes.txt"]
    assert {(r.levelno, vars(r)["HZSYNCD_TABLE"]) for r in logged} == {(logging.INFO, "org_info")}


def test_symlinks_fifos_and_directories_with_accepted_names_are_refused_once_each(
    spool: Spool, tmp_path: Path, make_watcher: MakeWatcher
) -> None:
    folder = drop_dir(spool)
    (tmp_path / "target.json").write_text('{"org_id": "1"}')
    (folder / "x.json").symlink_to(tmp_path / "target.json")  # found by the first scan
    watcher = make_watcher(observer="inotify")
    os.mkfifo(folder / "y.ndjson")  # found by events, and by rescans after
    (folder / "z.json").mkdir()
    refused: list[tuple[Path, str]] = []
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:
        watcher.wait(0.05)
        assert watcher.ready() == []
        refused += [(path, reason) for path, _, reason in watcher.refused()]
    assert sorted((p.name, reason) for p, reason in refused) == [
        ("x.json", "a symbolic link, not a regular file"),
        ("y.ndjson", "a named pipe (FIFO), not a regular file"),
        ("z.json", "a directory, not a regular file"),
    ]
    # The daemon moves the symlink to failed/ and forgets it; a new one is refused again.
    (folder / "x.json").unlink()
    watcher.forget(folder / "x.json")
    (folder / "x.json").symlink_to(tmp_path / "target.json")
    deadline = time.monotonic() + 3
    while not (again := watcher.refused()) and time.monotonic() < deadline:
        watcher.wait(0.05)
    assert [p.name for p, _, _ in again] == ["x.json"]


def test_files_in_done_failed_and_work_are_never_ready(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    for op in Operation:
        folder = spool.drop_folder("org_info", op)
        day = folder.done_dir(date(2024, 1, 2))
        day.mkdir(parents=True)
        for below in (day, folder.done_root, folder.failed_dir, folder.work_dir):
            (below / "below.json").write_text('{"org_id": "1"}')
    watcher = make_watcher(observer="inotify")
    (spool.drop_folder("org_info", Operation.REPORT).failed_dir / "later.json").write_text("{}")
    (drop_dir(spool) / "control.json").write_text('{"org_id": "1"}')
    assert names(collect(watcher, 0.3)) == ["control.json"]


def test_parents_come_first_when_files_of_several_tables_are_ready_together(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    (drop_dir(spool, "service_credit") / "credit.json").write_text('{"credit_id": "1"}')
    os.utime(drop_dir(spool, "service_credit") / "credit.json", ns=(10**18, 10**18))
    (drop_dir(spool, "flat_info") / "flat.json").write_text('{"flat_id": "1"}')
    (drop_dir(spool, "org_in_flat") / "b.json").write_text("{}")
    os.utime(drop_dir(spool, "org_in_flat") / "b.json", ns=(2 * 10**18, 2 * 10**18))
    (drop_dir(spool, "org_in_flat") / "a.json").write_text("{}")
    watcher = make_watcher(settle_seconds=0.1, rescan_seconds=60)
    found = first(watcher)
    assert [c.folder.table.name for c in found] == [
        "flat_info",
        "org_in_flat",
        "org_in_flat",
        "service_credit",
    ]
    assert names(found) == ["flat.json", "a.json", "b.json", "credit.json"]  # then oldest first


def test_wait_returns_within_its_timeout_when_nothing_happens_and_at_once_on_an_event(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    watcher = make_watcher(observer="inotify", settle_seconds=0.1, rescan_seconds=60)
    watcher.ready()  # the first scan, due at start
    started = time.monotonic()
    assert watcher.wait(0.3) is False
    assert 0.25 <= time.monotonic() - started < 0.3 + 0.5
    (drop_dir(spool) / "w.json").write_text("{}")
    started = time.monotonic()
    assert watcher.wait(5) is True
    assert time.monotonic() - started < 1.0
    assert names(first(watcher)) == ["w.json"]


def test_a_name_dropped_again_after_it_was_taken_and_forgotten_is_ready_again(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    folder = spool.drop_folder("org_info", Operation.REPORT)
    watcher = make_watcher(observer="inotify")
    (folder.path / "again.json").write_text('{"org_id": "1"}')
    assert names(first(watcher)) == ["again.json"]
    assert collect(watcher, 0.3) == []  # given once, while it waits to be taken
    (folder.path / "again.json").rename(folder.work_dir / "again.json")  # the daemon claims it
    watcher.forget(folder.path / "again.json")
    (folder.path / "again.json").write_text('{"org_id": "2"}')
    assert names(first(watcher)) == ["again.json"]


def test_a_file_left_in_place_after_forget_is_given_again_after_settling(
    spool: Spool, make_watcher: MakeWatcher
) -> None:
    watcher = make_watcher(observer="inotify")
    (drop_dir(spool) / "stays.json").write_text('{"org_id": "1"}')
    assert names(first(watcher)) == ["stays.json"]
    watcher.forget(drop_dir(spool) / "stays.json")
    assert names(first(watcher)) == ["stays.json"]


def test_missing_drop_folders_are_named_in_one_warning_and_the_others_watched(
    spool: Spool, make_watcher: MakeWatcher, records: list[logging.LogRecord]
) -> None:
    shutil.rmtree(drop_dir(spool, "service_item") / "delete")
    watcher = make_watcher(observer="inotify", settle_seconds=30, rescan_seconds=60)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "service_item/delete (" in warnings[0]
    assert not (drop_dir(spool, "service_item") / "delete").exists()
    tmp = drop_dir(spool, "service_item") / "i.tmp"
    tmp.write_text('{"item_id": "1"}')
    tmp.rename(drop_dir(spool, "service_item") / "i.json")
    assert names(first(watcher)) == ["i.json"]


def test_a_drop_folder_that_appears_later_is_watched_from_the_next_rescan(
    spool: Spool, make_watcher: MakeWatcher, records: list[logging.LogRecord]
) -> None:
    shutil.rmtree(drop_dir(spool, "service_item") / "delete")
    watcher = make_watcher(observer="inotify", settle_seconds=30, rescan_seconds=0.05)
    (drop_dir(spool, "service_item") / "delete").mkdir()
    assert collect(watcher, 0.2) == []
    tmp = drop_dir(spool, "service_item") / "delete" / "i.tmp"
    tmp.write_text('{"item_id": "1"}')
    tmp.rename(tmp.with_name("i.json"))  # settle_seconds is 30: only an event can do it
    found = first(watcher)
    assert names(found) == ["i.json"] and found[0].folder.op is Operation.DELETE
    assert len([r for r in records if r.levelno == logging.WARNING]) == 1


def test_when_inotify_cannot_start_the_watcher_polls_and_says_so_once(
    spool: Spool,
    make_watcher: MakeWatcher,
    records: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from watchdog.observers.inotify import InotifyObserver

    def no_watches(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "schedule", no_watches)
    watcher = make_watcher(observer="inotify", settle_seconds=0.1)
    assert watcher.observer_kind == "polling"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "inotify watch limit reached" in warnings[0]
    (drop_dir(spool) / "f.json").write_text('{"org_id": "1"}')
    assert names(first(watcher)) == ["f.json"]


def test_auto_chooses_inotify_on_a_local_tmp_path(spool: Spool, make_watcher: MakeWatcher) -> None:
    assert make_watcher(observer="auto").observer_kind == "inotify"


MOUNTINFO = r"""
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 22 0:40 / /srv rw,relatime shared:9 - nfs4 nas:/export rw,vers=4.2
31 30 259:3 / /srv/local rw,relatime shared:10 - xfs /dev/nvme0n1p3 rw
32 22 0:41 / /mnt/share\040one rw,relatime - cifs //nas/one rw
33 22 0:42 / /mnt/remote rw,nosuid - fuse.sshfs u@host:/ rw
34 22 0:43 / /mnt/vault rw,nosuid - fuse.gocryptfs /root/.vault rw
35 22 0:44 / /data rw - ext4 /dev/sdb1 rw
36 22 0:45 / /data rw - nfs nas:/data rw
37 22 0:46 / /data2 rw - ext4 /dev/sdc1 rw
garbage line
"""


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/var/spool/hzsyncd", "inotify"),  # the root file system
        ("/srv/spool", "polling"),  # below an NFS mount
        ("/srv", "polling"),  # the mount point itself
        ("/srv/local/spool", "inotify"),  # a local file system mounted below the NFS one
        ("/mnt/share one/spool", "polling"),  # an escaped space in the mount point
        ("/mnt/share", "inotify"),  # a prefix of a mount point is not inside it
        ("/mnt/remote/spool", "polling"),  # FUSE over ssh
        ("/mnt/vault/spool", "inotify"),  # FUSE over local storage
        ("/data/spool", "polling"),  # mounted over: the later line wins
        ("/data2/spool", "inotify"),  # /data is not a prefix of /data2
    ],
)
def test_the_observer_is_chosen_from_the_type_of_the_mount_holding_the_root(
    root: str, expected: str
) -> None:
    assert choose_observer(Path(root), MOUNTINFO) == expected


def test_unknown_observer_names_are_refused(spool: Spool) -> None:
    with pytest.raises(ValueError, match="auto, inotify or polling"):
        Watcher(spool, settle_seconds=1, rescan_seconds=1, observer="kqueue")
