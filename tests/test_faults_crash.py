"""`hzsyncd run` killed with SIGKILL at random moments: nothing lost, little repeated.

A seeded run (the seed is printed; set HZSYNCD_CRASH_SEED to replay one) over ≥ 20,000 records
in all 7 tables, reports and deletes, some records rejected by the server (org_property "7")
and some deferred by a missing relation that clears when a later-dropped parent file arrives.
The daemon is killed ≥ 20 times, each time mid-run, the ledger's `sending` rows are read
(read-only) before the restart, and at the end the receipts of the emulator and the ledger are
compared. HZSYNCD_SOAK=1 runs a larger version (more kills, more records).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import drop, ndjson, write_config
from daemon_helpers import DaemonProcess, NotifySocket, wait_for

from hzsyncd.emulator import Emulator
from hzsyncd.tables import DATA_METHODS, TABLES

SOAK = os.environ.get("HZSYNCD_SOAK") == "1"
KILLS = 60 if SOAK else 20
SCALE = 5 if SOAK else 1
MAX_IN_FLIGHT = 8
TARGETED_KILLS = 6 if SOAK else 3  # of KILLS, aimed at deletes in flight
FILE_SIZE = 250 * SCALE

CONFIG = {
    "service": {"timeout": 5, "max_in_flight": MAX_IN_FLIGHT},
    "spool": {"settle_seconds": 0.2, "rescan_seconds": 1, "incomplete_seconds": 60},
    "retry": {
        "backoff_initial": 0.2,
        "backoff_max": 1,
        "ip_retry_seconds": 0.5,
        # Long enough that no deferred record expires during the test: every deferral here
        # clears (a late parent) or is a defect.
        "relation_retry_hours": 1,
    },
}


# The data set --------------------------------------------------------------------------------


class Plan:
    """Input files (table, delete?, name, records) in drop order, and what must become of them."""

    def __init__(self, rng: random.Random, scale: int):
        self.files: list[tuple[str, bool, str, list[dict[str, Any]]]] = []
        self.late: list[tuple[str, bool, str, list[dict[str, Any]]]] = []
        self.rejected: set[tuple[str, str, str]] = set()  # (table, op, key) rejected by the server
        n = {
            "flat": 1000 * scale,
            "late_flat": 200 * scale,
            "sorg": 2000 * scale,
            "org": 5000 * scale,
            "del_org": 1000 * scale,
            "oif": 3000 * scale,
            "oif_late": 300 * scale,
            "item": 3000 * scale,
            "act": 3000 * scale,
            "credit": 2000 * scale,
            "del_credit": 500 * scale,
        }
        flats = [f"F{i:06d}" for i in range(n["flat"])]
        late_flats = [f"FL{i:06d}" for i in range(n["late_flat"])]
        sorgs = [f"O{i:06d}" for i in range(n["sorg"])]
        bad = set(rng.sample(sorgs, max(1, len(sorgs) // 20)))
        good = [o for o in sorgs if o not in bad]
        orgs = [f"E{i:06d}" for i in range(n["org"])]
        items = [f"I{i:06d}" for i in range(n["item"])]
        acts = [f"A{i:06d}" for i in range(n["act"])]
        credits = [f"C{i:06d}" for i in range(n["credit"])]

        def add(table: str, records: list[dict[str, Any]], delete: bool = False) -> None:
            kind = "del" if delete else "rep"
            for start in range(0, len(records), FILE_SIZE):
                number = start // FILE_SIZE
                name = f"{table}-{kind}-{number:03d}.ndjson"
                self.files.append((table, delete, name, records[start : start + FILE_SIZE]))

        add("flat_info", [{"flat_id": f, "flat_name": "平台" + f, "flat_type": "1"} for f in flats])
        sorg_rows = []
        for o in sorgs:
            sorg_rows.append(
                {"org_id": o, "org_name": "机构", "org_property": "7" if o in bad else "3"}
            )
            if o in bad:
                self.rejected.add(("service_org_info", "report", o))
        add("service_org_info", sorg_rows)
        add("org_info", [{"org_id": e, "org_name": "企业", "amount": 30.10} for e in orgs])
        pairs = [
            {"flat_id": rng.choice(flats), "org_id": good[i % len(good)], "n": i}
            for i in range(n["oif"])
        ]
        late_pairs = [
            {
                "flat_id": late_flats[i % len(late_flats)],
                "org_id": good[(i * 7) % len(good)],
                "n": -i,
            }
            for i in range(n["oif_late"])
        ]
        # The key is flat_id+org_id: keep each pair once.
        seen: set[tuple[str, str]] = set()
        oif = []
        for row in pairs + late_pairs:
            k = (row["flat_id"], row["org_id"])
            if k not in seen:
                seen.add(k)
                oif.append(row)
        rng.shuffle(oif)
        add("org_in_flat", oif)
        add("service_item", [{"item_id": i, "org_id": rng.choice(good)} for i in items])
        add("service_activity", [{"activity_id": a, "item_id": rng.choice(items)} for a in acts])
        add("service_credit", [{"credit_id": c, "activity_id": rng.choice(acts)} for c in credits])
        # Deletes name keys already reported (in earlier files), of tables nobody refers to.
        add("org_info", [{"org_id": e} for e in rng.sample(orgs, n["del_org"])], delete=True)
        add(
            "service_credit",
            [{"credit_id": c} for c in rng.sample(credits, n["del_credit"])],
            delete=True,
        )
        # A parent file dropped late: the org_in_flat rows naming these flats wait for it.
        late_rows = [{"flat_id": f, "flat_name": "后来", "flat_type": "2"} for f in late_flats]
        self.late.append(("flat_info", False, "flat_info-rep-late.ndjson", late_rows))

    @property
    def all_files(self) -> list[tuple[str, bool, str, list[dict[str, Any]]]]:
        return self.files + self.late

    @property
    def total(self) -> int:
        return sum(len(records) for *_, records in self.all_files)

    def failed_names(self) -> set[str]:
        names = set()
        for table, delete, name, records in self.all_files:
            for r in records:
                if table == "service_org_info" and not delete and r.get("org_property") == "7":
                    names.add(name)
        return names


# Helpers -------------------------------------------------------------------------------------


def start_daemon(config: Path, log: Path, timeout: float = 30) -> DaemonProcess:
    notify = NotifySocket(Path(tempfile.mkdtemp(prefix="hzc")) / "n.sock")
    try:
        daemon = DaemonProcess(config, log, {"NOTIFY_SOCKET": str(notify.path)})
        try:
            notify.wait("READY=1", timeout)
        except AssertionError:
            daemon.kill()
            raise AssertionError(f"no READY=1; log:\n{daemon.output()[-3000:]}") from None
        return daemon
    finally:
        notify.close()
        shutil.rmtree(notify.path.parent)


def sending_rows(ledger: Path) -> list[tuple[str, str, str, str]]:
    """The ledger's `sending` records, read-only, as a crash left them."""
    if not ledger.exists():
        return []
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        return list(
            conn.execute("SELECT table_name, op, key, hash FROM records WHERE state = 'sending'")
        )
    finally:
        conn.close()


def receipt_key(receipt: dict[str, Any]) -> tuple[str, str, str]:
    table, op = DATA_METHODS[receipt["method"]]
    return (table.name, op.value, table.key_of(json.loads(receipt["json"])))


def spool_files(spool: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in spool.rglob("*"):
        if path.name.startswith(".") or path.name.endswith(".errors.ndjson"):
            continue  # the owner lock, the errors reports
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    return found


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(
        port=0, allow=["127.0.0.1"], receipts=tmp_path / "receipts.ndjson", latency_ms=3
    ) as e:
        yield e


# The test ------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_nothing_and_repeats_only_calls_in_flight(
    tmp_path: Path, emu: Emulator
) -> None:
    seed = int(os.environ.get("HZSYNCD_CRASH_SEED") or random.randrange(2**32))
    print(f"\ncrash test seed: {seed} (replay with HZSYNCD_CRASH_SEED={seed})")
    rng = random.Random(seed)
    plan = Plan(rng, SCALE)
    assert plan.total >= 20_000
    config = write_config(tmp_path, emu.wsdl_url, **CONFIG)
    spool = tmp_path / "spool"
    ledger = tmp_path / "var" / "ledger.db"
    started = time.monotonic()

    # Files are dropped in waves between restarts so that every kill lands on work in progress.
    waves: list[list[tuple[str, bool, str, list[dict[str, Any]]]]] = [[] for _ in range(KILLS // 2)]
    for number, spec in enumerate(plan.files):
        waves[min(number * len(waves) // len(plan.files), len(waves) - 1)].append(spec)
    # The late parent file comes once its children have met the missing relation.
    late_at = len(waves)
    late_dropped = False

    def relation_seen() -> bool:
        return any(str(r.get("response")).startswith("error-2001") for r in emu.receipts())

    def drop_wave(specs: list[tuple[str, bool, str, list[dict[str, Any]]]]) -> None:
        for table, delete, name, records in specs:
            tmp = drop(spool, table, name + ".tmp", ndjson(records), delete=delete)
            tmp.rename(tmp.with_name(name))

    targeted = 0

    def deletes_under_way(since: int) -> bool:
        """Wait (bounded) for this run's delete calls, while deletes remain to be sent."""
        if not any(delete for _t, delete, *_ in plan.files[: sum(map(len, waves[: kill + 1]))]):
            return False

        def delete_call() -> bool:
            return any(r["method"].startswith("delete") for r in emu.receipts()[since:])

        try:
            wait_for(delete_call, 3, "a delete call", every=0.01)
        except AssertionError:
            return False
        return True

    snapshots: list[list[tuple[str, str, str, str]]] = []
    daemon: DaemonProcess | None = None
    try:
        for kill in range(KILLS):
            if kill < len(waves):
                drop_wave(waves[kill])
            if not late_dropped and kill >= late_at and relation_seen():
                drop_wave(plan.late)
                late_dropped = True
            daemon = start_daemon(config, tmp_path / "daemon.log")
            calls_before = len(emu.receipts())
            # Let it get going (a call or more), then kill it at a random moment.
            wait_for(
                lambda n=calls_before: len(emu.receipts()) > n, 30, "the restarted daemon's calls"
            )
            if targeted < TARGETED_KILLS and deletes_under_way(calls_before):
                # Some kills are aimed at deletes in flight: a delete repeated after a crash
                # meets a key already gone, which a repeated report never does.
                targeted += 1
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.05, 1.2))
            assert daemon.proc.poll() is None, f"daemon died by itself:\n{daemon.output()[-3000:]}"
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=10)
            snapshots.append(sending_rows(ledger))
        # The last run is left to finish.
        daemon = start_daemon(config, tmp_path / "daemon.log")
        if not late_dropped:
            wait_for(relation_seen, 90, "org_in_flat rows deferred for their late flat", every=0.2)
            drop_wave(plan.late)
        expected_names = {name for *_, name, _ in plan.all_files}

        def replayed_deletes_stuck() -> list[str]:
            """Deletes deferred as "not stored" although the service did delete them."""
            conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
            try:
                rows = conn.execute(
                    "SELECT table_name, key FROM records WHERE op = 'delete' "
                    "AND state = 'deferred' AND code = '3001'"
                ).fetchall()
            finally:
                conn.close()
            done = {
                receipt_key(r)
                for r in emu.receipts()
                if r.get("json") and r.get("response") == "" and r["method"].startswith("delete")
            }
            return [f"{t}/{k}" for t, k in rows if (t, "delete", k) in done]

        def finished() -> bool:
            stuck = replayed_deletes_stuck()
            if stuck:
                pytest.fail(
                    f"{len(stuck)} delete(s) resent after a kill, answered error-3001 (the lost "
                    f"call had deleted them) and deferred as a missing relation, so their files "
                    f"wait relation_retry_hours and then fail: {stuck[:5]}"
                )
            found = spool_files(spool)
            return set(found) == expected_names and all(
                "/done/" in str(p) or "/failed/" in str(p) for ps in found.values() for p in ps
            )

        deadline_s = 900 if SOAK else 90
        try:
            wait_for(finished, deadline_s, "every input file in done/ or failed/", every=0.5)
        except AssertionError:
            pending = sorted(
                str(p.relative_to(spool))
                for ps in spool_files(spool).values()
                for p in ps
                if "/done/" not in str(p) and "/failed/" not in str(p)
            )
            conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
            open_rows = conn.execute(
                "SELECT table_name, op, key, state, outcome, code, response FROM records "
                "WHERE state != 'final' LIMIT 20"
            ).fetchall()
            conn.close()
            raise AssertionError(
                f"not finished: {pending[:20]}; open records: {open_rows}; "
                f"log tail:\n{daemon.output()[-2000:]}"
            ) from None
        assert daemon.stop(timeout=20) == 0
    finally:
        if daemon is not None:
            daemon.kill()
    elapsed = time.monotonic() - started

    # -- every input file in done/ or failed/ exactly once; .work/ empty -----------------------
    found = spool_files(spool)
    assert sorted(n for n, ps in found.items() if len(ps) != 1) == []
    failed_now = {n for n, ps in found.items() if "/failed/" in str(ps[0])}
    assert failed_now == plan.failed_names()
    assert [p for p in spool.rglob(".work/*")] == []

    # -- receipts: every record delivered at least once ----------------------------------------
    receipts = [r for r in emu.receipts() if "json" in r and r.get("fault") is None]
    final = [r for r in receipts if r["response"] == "" or str(r["response"]).startswith("[")]
    deliveries = Counter(receipt_key(r) for r in final)
    expected: set[tuple[str, str, str]] = set()
    for table, delete, _name, records in plan.all_files:
        for r in records:
            expected.add((table, "delete" if delete else "report", TABLES[table].key_of(r)))
    lost = expected - set(deliveries)
    assert not lost, f"{len(lost)} record(s) never delivered, e.g. {sorted(lost)[:5]}"
    rejected_seen = {receipt_key(r) for r in final if str(r["response"]).startswith("[")}
    assert rejected_seen == plan.rejected

    # -- duplicates: only calls in flight at a kill, at most max_in_flight per kill -----------
    # `sending` rows at a kill: the calls out, plus the next record, whose mark may be
    # committed while they are out (a marked record never sent is sent once, later).
    per_kill = [len(s) for s in snapshots]
    sending_at_kill = {(t, o, k) for s in snapshots for (t, o, k, _h) in s}
    repeated = {k: c for k, c in deliveries.items() if c > 1}
    assert set(repeated) <= sending_at_kill, sorted(set(repeated) - sending_at_kill)[:10]
    dup_per_kill = [sum(1 for t, o, k, _ in s if (t, o, k) in repeated) for s in snapshots]
    assert max(dup_per_kill) <= MAX_IN_FLIGHT, dup_per_kill
    extra = sum(c - 1 for c in repeated.values())
    assert extra <= MAX_IN_FLIGHT * KILLS
    # A record repeated twice must have been in flight at two kills.
    for key, count in repeated.items():
        assert count - 1 <= sum(1 for s in snapshots if key in {(t, o, k) for t, o, k, _ in s})

    # -- the ledger equals the receipts ---------------------------------------------------------
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        accepted = {receipt_key(r) for r in final if r["response"] == ""}
        assert one("SELECT count(*) FROM records") == plan.total
        assert one("SELECT count(*) FROM records WHERE state != 'final'") == 0
        assert one("SELECT count(*) FROM records WHERE outcome = 'ok'") == len(accepted)
        assert one("SELECT count(*) FROM records WHERE outcome = 'rejected'") == len(plan.rejected)
        assert one("SELECT count(*) FROM records WHERE outcome NOT IN ('ok', 'rejected')") == 0
        # The server's final state per key is the ledger's `current`.
        assert one("SELECT count(*) FROM current") == len({(t, k) for t, _o, k in accepted})
        assert one("SELECT count(*) FROM current WHERE op = 'delete'") == len(
            {k for k in accepted if k[1] == "delete"}
        )
        # The history never claims more accepted calls than the service saw.
        assert one("SELECT count(*) FROM attempts WHERE outcome = 'ok'") <= len(accepted)
        # Rejections are final and told by the record rows: one per rejected record.
        assert one(
            "SELECT count(DISTINCT table_name || op || key) FROM records WHERE outcome = 'rejected'"
        ) == len(plan.rejected)
        # Accepted receipts beyond one per record are exactly the repeats after kills.
        assert sum(1 for r in final if r["response"] == "") - len(accepted) == sum(
            c - 1 for k, c in repeated.items() if k in accepted
        )
        assert one("SELECT count(*) FROM files WHERE disposition = 'done'") == len(
            expected_names
        ) - len(plan.failed_names())
        assert one("SELECT count(*) FROM files WHERE disposition = 'failed'") == len(
            plan.failed_names()
        )
        assert one("SELECT count(*) FROM files WHERE state != 'final'") == 0
        # Records deferred by the late parent went through after it came.
        assert (
            one(
                "SELECT count(*) FROM records WHERE table_name = 'org_in_flat' AND relation_since "
                "IS NOT NULL AND outcome = 'ok'"
            )
            > 0
        )
    finally:
        conn.close()

    print(
        f"crash figures: seed {seed}; kills survived {len(snapshots)}; records {plan.total} "
        f"in {len(expected_names)} files; calls {len(receipts)}; duplicates {extra} "
        f"(records repeated {len(repeated)}); sending at kill max {max(per_kill)} "
        f"mean {sum(per_kill) / len(per_kill):.2f}; duplicates per kill max "
        f"{max(dup_per_kill)} mean {sum(dup_per_kill) / len(dup_per_kill):.2f}; "
        f"kills with calls in flight {sum(1 for n in per_kill if n)}; "
        f"records lost {len(lost)}; {elapsed:.1f} s"
    )
