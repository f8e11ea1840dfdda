"""The spool on real folders: layout, init, accepted names, moves that never overwrite."""

from __future__ import annotations

import errno
import grp
import os
import stat
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from hzsyncd import spool as spool_module
from hzsyncd.errors import SpoolError
from hzsyncd.spool import (
    DropFolder,
    Spool,
    fsync_dir,
    is_regular_file,
    move_no_overwrite,
    name_kind,
    write_new,
)
from hzsyncd.tables import TABLES, Operation


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", TABLES)


@pytest.fixture
def umask() -> Iterator[int]:
    """A strict umask for the test, so that modes set despite it are seen to be set."""
    old = os.umask(0o077)
    yield 0o077
    os.umask(old)


def make(path: Path, data: bytes = b'{"org_id": "1"}\n') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- layout ----------------------------------------------------------------------------------


def test_drop_folders_are_report_then_delete_per_table_parents_first(spool: Spool) -> None:
    folders = spool.drop_folders()
    assert [(f.table.name, f.op) for f in folders[:4]] == [
        ("flat_info", Operation.REPORT),
        ("flat_info", Operation.DELETE),
        ("service_org_info", Operation.REPORT),
        ("service_org_info", Operation.DELETE),
    ]
    ranks = [f.table.rank for f in folders]
    assert ranks == sorted(ranks)
    assert [f.table.name for f in folders[::2]] == list(TABLES)  # stable within a rank
    assert folders[0].path == spool.root / "flat_info"
    assert folders[1].path == spool.root / "flat_info" / "delete"


def test_drop_folders_are_ordered_by_rank_whatever_the_order_given(tmp_path: Path) -> None:
    backwards = dict(reversed(TABLES.items()))
    ranks = [f.table.rank for f in Spool(tmp_path, backwards).drop_folders()]
    assert ranks == sorted(ranks)


def test_drop_folder_knows_its_work_done_and_failed_folders(tmp_path: Path) -> None:
    folder = DropFolder(TABLES["org_info"], Operation.DELETE, tmp_path / "org_info" / "delete")
    assert folder.work_dir == tmp_path / "org_info/delete/.work"
    assert folder.failed_dir == tmp_path / "org_info/delete/failed"
    assert folder.done_dir(date(2024, 3, 9)) == tmp_path / "org_info/delete/done/2024-03-09"


def test_drop_folder_by_table_and_operation(spool: Spool) -> None:
    folder = spool.drop_folder("service_item", Operation.DELETE)
    assert folder.path == spool.root / "service_item" / "delete"
    with pytest.raises(SpoolError, match="unknown table 'nope'"):
        spool.drop_folder("nope", Operation.REPORT)


def test_folder_of_a_file_directly_in_a_drop_folder(spool: Spool) -> None:
    report = spool.folder_of(spool.root / "org_info" / "a.json")
    delete = spool.folder_of(spool.root / "org_info" / "delete" / "a.json")
    assert report is not None and (report.table.name, report.op) == ("org_info", Operation.REPORT)
    assert delete is not None and (delete.table.name, delete.op) == ("org_info", Operation.DELETE)


@pytest.mark.parametrize(
    "where",
    [
        "org_info/done/2024-01-01/a.json",
        "org_info/failed/a.json",
        "org_info/.work/a.json",
        "org_info/delete/failed/a.json",
        "a.json",
        "nope/a.json",
    ],
)
def test_folder_of_anything_else_is_none(spool: Spool, where: str) -> None:
    assert spool.folder_of(spool.root / where) is None


def test_folder_of_compares_normalised_paths(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(spool.root.parent)
    found = spool.folder_of(Path("spool/org_info/../org_info/delete/x.json"))
    assert found is not None and found.op is Operation.DELETE


# --- init ------------------------------------------------------------------------------------


def test_init_creates_every_folder_once(spool: Spool) -> None:
    assert spool.missing() == spool.layout()
    created = spool.init()
    assert created == spool.layout()
    assert len(created) == 1 + 14 * 4
    for folder in spool.drop_folders():
        for path in (folder.path, folder.work_dir, folder.failed_dir, folder.path / "done"):
            assert path.is_dir()
    assert spool.missing() == []
    assert spool.init() == []  # idempotent


def test_init_sets_the_mode_whatever_the_umask(spool: Spool, umask: int) -> None:
    spool.init()
    for path in spool.layout():
        assert stat.S_IMODE(path.stat().st_mode) == 0o2775, path


def test_init_with_another_mode_and_group(spool: Spool, umask: int) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    spool.init(mode=0o750, group=group)
    for path in spool.layout():
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o750, os.getgid())


def test_init_leaves_existing_folders_alone(spool: Spool) -> None:
    folder = spool.drop_folder("org_info", Operation.REPORT).path
    folder.mkdir(parents=True)
    folder.chmod(0o700)
    created = spool.init()
    assert folder not in created and folder / "done" in created
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_init_with_unknown_group_creates_nothing(spool: Spool) -> None:
    with pytest.raises(SpoolError, match="unknown group 'no-such-group-hzsyncd'"):
        spool.init(group="no-such-group-hzsyncd")
    assert not spool.root.exists()


def test_init_refuses_a_file_where_a_folder_belongs(spool: Spool) -> None:
    make(spool.root / "org_info", b"")
    with pytest.raises(SpoolError, match="org_info: exists and is not a folder"):
        spool.init()


def test_has_done_files(spool: Spool) -> None:
    spool.init()
    assert not spool.has_done_files()
    make(spool.root / "org_info" / "failed" / "a.json")
    (spool.root / "org_info" / "done" / "2024-01-01").mkdir()
    assert not spool.has_done_files()  # folders and failed/ files do not count
    make(spool.root / "service_credit" / "delete" / "done" / "2024-01-01" / "a.json")
    assert spool.has_done_files()


def test_has_done_files_without_any_folder(spool: Spool) -> None:
    assert not spool.has_done_files()


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.json", "accept"),
        ("A.JSON", "accept"),
        ("a.ndjson", "accept"),
        ("a.NDJson", "accept"),
        ("a.jsonl", "accept"),
        ("2024-01-01.orgs.json", "accept"),
        ("服务机构.json", "accept"),
        (".a.json", "ignore"),
        (".json", "ignore"),
        (".hidden", "ignore"),
        ("a.json.tmp", "ignore"),
        ("a.TMP", "ignore"),
        ("a.json.part", "ignore"),
        ("a.PART", "ignore"),
        ("a.json~", "ignore"),
        ("a.csv", "other"),
        ("a.json.bak", "other"),
        ("a.jsonx", "other"),
        ("json", "other"),
        ("README", "other"),
    ],
)
def test_name_kind(name: str, kind: str) -> None:
    assert name_kind(name) == kind


def test_is_regular_file_does_not_follow_symlinks(tmp_path: Path) -> None:
    target = make(tmp_path / "t.json")
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.json")
    assert is_regular_file(target)
    assert not is_regular_file(tmp_path / "link.json")
    assert not is_regular_file(tmp_path / "fifo.json")
    assert not is_regular_file(tmp_path)
    assert not is_regular_file(tmp_path / "absent.json")
    assert not is_regular_file(target / "below-a-file")


# --- move_no_overwrite -----------------------------------------------------------------------


def test_move_into_a_new_folder(tmp_path: Path) -> None:
    src = make(tmp_path / "drop" / "report.json", b"one")
    dest = move_no_overwrite(src, tmp_path / "drop" / "done" / "2024-01-01")
    assert dest == tmp_path / "drop" / "done" / "2024-01-01" / "report.json"
    assert dest.read_bytes() == b"one"
    assert not src.exists()


def test_move_never_overwrites_and_counts_before_the_suffix(tmp_path: Path) -> None:
    done = tmp_path / "done"
    moved = [move_no_overwrite(make(tmp_path / "report.json", b"%d" % i), done) for i in range(3)]
    assert [p.name for p in moved] == ["report.json", "report.1.json", "report.2.json"]
    assert [p.read_bytes() for p in moved] == [b"0", b"1", b"2"]


@pytest.mark.parametrize(
    ("name", "second"),
    [
        ("x.errors.ndjson", "x.errors.1.ndjson"),
        ("README", "README.1"),
        (".hidden", ".hidden.1"),
        ("a.b.c.JSON", "a.b.c.1.JSON"),
    ],
)
def test_counter_goes_before_the_last_suffix_only(tmp_path: Path, name: str, second: str) -> None:
    move_no_overwrite(make(tmp_path / name), tmp_path / "dest")
    assert move_no_overwrite(make(tmp_path / name), tmp_path / "dest").name == second


def test_move_under_another_name(tmp_path: Path) -> None:
    src = make(tmp_path / "x.json")
    make(tmp_path / "dest" / "renamed.json", b"old")
    dest = move_no_overwrite(src, tmp_path / "dest", "renamed.json")
    assert dest.name == "renamed.1.json"
    assert (tmp_path / "dest" / "renamed.json").read_bytes() == b"old"


def test_concurrent_moves_to_the_same_name_all_survive(tmp_path: Path) -> None:
    per_thread, threads = 50, 2
    for t in range(threads):
        for i in range(per_thread):
            make(tmp_path / f"src{t}" / f"{i}" / "report.json", f"{t}-{i}".encode())
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def mover(t: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                move_no_overwrite(tmp_path / f"src{t}" / f"{i}" / "report.json", tmp_path / "done")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=mover, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert not errors and not any(w.is_alive() for w in workers)
    contents = {p.read_bytes() for p in (tmp_path / "done").iterdir()}
    assert len(contents) == per_thread * threads
    assert contents == {f"{t}-{i}".encode() for t in range(threads) for i in range(per_thread)}


def test_symlink_is_moved_as_a_link_not_its_target(tmp_path: Path) -> None:
    target = make(tmp_path / "outside" / "secret.json", b"target")
    link = tmp_path / "drop" / "evil.json"
    link.parent.mkdir()
    link.symlink_to(target)
    dest = move_no_overwrite(link, tmp_path / "drop" / "failed")
    assert dest.is_symlink() and os.readlink(dest) == str(target)
    assert target.read_bytes() == b"target" and not os.path.lexists(link)


def test_dangling_symlink_is_moved_too(tmp_path: Path) -> None:
    link = tmp_path / "dangling.json"
    link.symlink_to(tmp_path / "nowhere")
    dest = move_no_overwrite(link, tmp_path / "failed")
    assert dest.is_symlink() and not os.path.lexists(link)


def test_move_interrupted_between_link_and_unlink_is_finished(tmp_path: Path) -> None:
    src = make(tmp_path / "work" / "report.json")
    (tmp_path / "done").mkdir()
    os.link(src, tmp_path / "done" / "report.json")  # where a crash would have left it
    dest = move_no_overwrite(src, tmp_path / "done")
    assert dest == tmp_path / "done" / "report.json"
    assert names(tmp_path / "done") == ["report.json"] and not src.exists()


def test_moving_a_file_onto_itself_keeps_it(tmp_path: Path) -> None:
    src = make(tmp_path / "report.json", b"keep")
    dest = move_no_overwrite(src, tmp_path)
    assert dest.read_bytes() == b"keep"


def test_moving_a_missing_file_is_a_spool_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot move .*absent.json.*No such file"):
        move_no_overwrite(tmp_path / "absent.json", tmp_path / "done")


def no_hard_links(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "check-then-rename"])
def test_without_hard_links_moves_still_never_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool
) -> None:
    monkeypatch.setattr(os, "link", no_hard_links)
    if not renameat2:
        monkeypatch.setattr(spool_module, "_renameat2", None)
    elif spool_module._renameat2 is None:
        pytest.skip("no renameat2() in this C library")
    done = tmp_path / "done"
    moved = [move_no_overwrite(make(tmp_path / "r.json", b"%d" % i), done) for i in range(3)]
    assert [p.name for p in moved] == ["r.json", "r.1.json", "r.2.json"]
    assert [p.read_bytes() for p in moved] == [b"0", b"1", b"2"]
    link = tmp_path / "l.json"
    link.symlink_to(tmp_path / "nowhere")
    assert move_no_overwrite(link, done).is_symlink()


def other_file_system(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm to move across file systems")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm and the test folder are on the same file system")
    return shm


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than tmp_path, removed afterwards."""
    folder = other_file_system(tmp_path) / f"hzsyncd-test-{os.getpid()}-{id(tmp_path)}"
    folder.mkdir()
    yield folder
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def test_move_across_file_systems_copies_syncs_and_removes(tmp_path: Path, elsewhere: Path) -> None:
    src = make(elsewhere / "report.json", b"across")
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    make(tmp_path / "done" / "report.json", b"taken")
    dest = move_no_overwrite(src, tmp_path / "done")
    assert dest == tmp_path / "done" / "report.1.json"
    assert dest.read_bytes() == b"across"
    assert dest.stat().st_mtime_ns == 1_600_000_000_123_456_789  # the queue orders by mtime
    assert not src.exists()
    assert names(tmp_path / "done") == ["report.1.json", "report.json"]  # no temporary left


def test_symlink_across_file_systems_stays_a_link(tmp_path: Path, elsewhere: Path) -> None:
    link = elsewhere / "link.json"
    link.symlink_to("/etc/passwd")
    dest = move_no_overwrite(link, tmp_path / "failed")
    assert dest.is_symlink() and os.readlink(dest) == "/etc/passwd"
    assert not os.path.lexists(link)


def test_fifo_across_file_systems_is_refused_and_left(tmp_path: Path, elsewhere: Path) -> None:
    os.mkfifo(elsewhere / "fifo.json")
    with pytest.raises(SpoolError, match="not a regular file"):
        move_no_overwrite(elsewhere / "fifo.json", tmp_path / "failed")
    assert os.path.lexists(elsewhere / "fifo.json")
    assert names(tmp_path / "failed") == []


# --- write_new, fsync_dir --------------------------------------------------------------------


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    first = write_new(tmp_path / "failed", "a.json.errors.ndjson", b"1\n")
    second = write_new(tmp_path / "failed", "a.json.errors.ndjson", b"2\n")
    assert (first.name, second.name) == ("a.json.errors.ndjson", "a.json.errors.1.ndjson")
    assert (first.read_bytes(), second.read_bytes()) == (b"1\n", b"2\n")
    assert names(tmp_path / "failed") == sorted([first.name, second.name])  # no temporary left


def test_write_new_gives_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        path = write_new(tmp_path, "r.ndjson", b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_write_new_into_an_unusable_folder_is_a_spool_error(tmp_path: Path) -> None:
    make(tmp_path / "file", b"")
    with pytest.raises(SpoolError, match="cannot write r.ndjson"):
        write_new(tmp_path / "file", "r.ndjson", b"x")


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(SpoolError, match="cannot open folder"):
        fsync_dir(tmp_path / "absent")
