#!/usr/bin/env python3
"""hzsyncd benchmarks: ratios measured side by side in one run, on loopback.

    python benchmarks/run.py            # full sizes (11-12 minutes on 2 quiet CPUs)
    python benchmarks/run.py --quick    # smaller sizes (about 2 minutes)

Prints one figure per line (see benchmarks/README.md), then the machine. The emulator runs in a
child process (`python -m hzsyncd emulate`), so that it does not share the GIL with the side
being measured. `send` is timed through the library (`open_session` + `send_files`), so that
interpreter start-up is not counted; memory figures run the CLI in child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CHILD_ENV = dict(
    os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
)

TABLE, METHOD, AREA = "org_info", "reportOrgInfo", "320000"
NAME = "江苏省某某科技服务有限公司"

FULL = dict(
    overhead=20_000,
    scaling_1=400,
    scaling_8=2_000,
    dedupe=200_000,
    ledger_small=10_000,
    ledger_big=2_000_000,
    validate_small=10 << 20,
    validate_big=1 << 30,
    send_small=2_000,
    send_big=200_000,
)
QUICK = dict(
    overhead=3_000,
    scaling_1=100,
    scaling_8=500,
    dedupe=50_000,
    ledger_small=10_000,
    ledger_big=200_000,
    validate_small=10 << 20,
    validate_big=100 << 20,
    send_small=2_000,
    send_big=20_000,
)
REPEAT = 3


# Helpers ---------------------------------------------------------------------------------------


def note(text: str) -> None:
    """Progress, on stderr (stdout has only the figures)."""
    print(f"  ({text})", file=sys.stderr, flush=True)


def line(n: int) -> str:
    return (
        f'{{"org_id":"E{n:07d}","org_name":"{NAME}","area_code":"{AREA}",'
        f'"register_asset":{n % 1000}.{n % 100:02d}}}\n'
    )


def write_ndjson(path: Path, count: int, start: int = 0) -> Path:
    """`count` org_info records, keys E{start}…, written in big chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for base in range(start, start + count, 10_000):
            f.write("".join(line(n) for n in range(base, min(base + 10_000, start + count))))
    return path


def write_ndjson_bytes(path: Path, size: int) -> int:
    """Records until the file holds at least `size` bytes; returns the record count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = written = 0
    with path.open("wb") as f:
        while written < size:
            chunk = "".join(line(k) for k in range(n, n + 10_000)).encode()
            f.write(chunk)
            written += len(chunk)
            n += 10_000
    return n


def write_config(base: Path, wsdl: str, max_in_flight: int = 1) -> Path:
    """A config like tests/conftest.py's write_config: spool and ledger under `base`."""
    values: dict[str, dict[str, Any]] = {
        "service": {"wsdl": wsdl, "area_code": AREA, "timeout": 30, "max_in_flight": max_in_flight},
        "account": {"user_id": "demo", "password": "demo"},
        "spool": {"root": str(base / "spool"), "settle_seconds": 0},
        "ledger": {"path": str(base / "var" / "ledger.db")},
        "retry": {"backoff_initial": 1, "backoff_max": 4},
        "log": {"target": "stderr", "level": "warning"},
    }
    lines = []
    for name, keys in values.items():
        lines.append(f"[{name}]")
        for key, value in keys.items():
            text = f'"{value}"' if isinstance(value, str) else str(value)
            lines.append(f"{key} = {text}")
    base.mkdir(parents=True, exist_ok=True)
    path = base / "hzsyncd.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def drop_path(base: Path, name: str) -> Path:
    folder = base / "spool" / TABLE
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@contextlib.contextmanager
def emulator(work: Path, latency_ms: int = 0) -> Iterator[str]:
    """`hzsyncd emulate` in a child process allowing 127.0.0.1; yields its WSDL URL."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"emulator-{latency_ms}-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hzsyncd", "emulate", "--port", "0", "--allow", "127.0.0.1"]
            + ["--latency-ms", str(latency_ms)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=CHILD_ENV,
            cwd=work,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            found = re.search(r"(http://\S+\?wsdl)", log.read_text())
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start: {log.read_text()}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def best_of(sides: dict[str, Callable[[int], float]], repeat: int = REPEAT) -> dict[str, float]:
    """Run the sides alternately `repeat` times each; the best (highest) rate of each."""
    best: dict[str, float] = {}
    for rep in range(repeat):
        names = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in names:
            rate = sides[name](rep)
            best[name] = max(best.get(name, 0.0), rate)
    return best


def library_send(cfg: Path, path: Path, expect: int) -> float:
    """Time `hzsyncd send` through the library (session opened inside the timing); seconds."""
    from hzsyncd import logs
    from hzsyncd.config import load_config
    from hzsyncd.send import send_files
    from hzsyncd.session import open_session

    config = load_config(cfg)
    logs.setup(config.log.target, config.log.level)
    started = time.perf_counter()
    with open_session(config) as session:
        result = send_files(session, [path])
    elapsed = time.perf_counter() - started
    report = result.reports[0] if result.reports else None
    if result.exit_code != 0 or report is None or report.records != expect:
        raise RuntimeError(f"send of {path} did not finish: {report} exit {result.exit_code}")
    return elapsed


# 1. overhead -----------------------------------------------------------------------------------


def bench_overhead(tmp: Path, n: int) -> str:
    from hzsyncd.client import ReportClient
    from hzsyncd.reader import compact, read_records

    data = write_ndjson(tmp / "overhead" / "data.ndjson", n)
    payloads = [compact(r.data) for r in read_records(data) if hasattr(r, "data")]
    with emulator(tmp / "overhead") as wsdl:

        def send(rep: int) -> float:
            base = tmp / "overhead" / f"send-{rep}"
            cfg = write_config(base, wsdl, max_in_flight=1)
            path = shutil.copy(data, drop_path(base, "data.ndjson"))
            return n / library_send(cfg, Path(path), n)

        def bare(rep: int) -> float:
            started = time.perf_counter()
            client = ReportClient(wsdl, timeout=30)
            for payload in payloads:
                reply, _ = client.call(METHOD, payload, AREA)
                if reply.outcome.value != "ok":
                    raise RuntimeError(f"bare call: {reply}")
            return n / (time.perf_counter() - started)

        best = best_of({"send": send, "bare": bare})
    ratio = best["send"] / best["bare"]
    return (
        f"overhead {ratio:.2f} (send {best['send']:.0f} rec/s, bare {best['bare']:.0f} rec/s; "
        f"{n} records, max_in_flight 1, library send; target >= 0.90)"
    )


# 2. scaling ------------------------------------------------------------------------------------


def bench_scaling(tmp: Path, n1: int, n8: int) -> str:
    with emulator(tmp / "scaling", latency_ms=50) as wsdl:

        def side(mif: int, n: int) -> Callable[[int], float]:
            def run(rep: int) -> float:
                base = tmp / "scaling" / f"mif{mif}-{rep}"
                cfg = write_config(base, wsdl, max_in_flight=mif)
                # Keys differ per run: every record is a real call.
                path = write_ndjson(drop_path(base, "data.ndjson"), n, start=(rep * 10 + mif) * n)
                return n / library_send(cfg, path, n)

            return run

        best = best_of({"1": side(1, n1), "8": side(8, n8)})
    ratio = best["8"] / best["1"]
    return (
        f"scaling {ratio:.2f} (max_in_flight 8: {best['8']:.0f} rec/s on {n8}, "
        f"max_in_flight 1: {best['1']:.0f} rec/s on {n1}; latency 50 ms; target >= 6.5)"
    )


# 3. dedupe -------------------------------------------------------------------------------------


def fill_as_sent(cfg: Path, data: Path) -> None:
    """The ledger as a first send of `data` leaves it, through the ledger's API, without calls:
    one file, and per record add_record (final, ok) + accept with the reader's digest and the
    table's key, exactly what the second send's duplicate rule looks up."""
    from hzsyncd.config import load_config
    from hzsyncd.ledger import Ledger
    from hzsyncd.reader import read_records
    from hzsyncd.work import sha256_of

    config = load_config(cfg)
    table = config.tables[TABLE]
    records = sum(1 for _ in read_records(data))
    with Ledger.open(config.ledger.path, create=True) as ledger:
        file_id = ledger.add_file(
            sha256=sha256_of(data),
            name=data.name,
            origin=str(data),
            drop_dir=str(data.parent),
            table_name=TABLE,
            op="report",
            state="final",
            disposition="done",
            records=records,  # a first send records the count its first pass found
        )
        for item in read_records(data):
            key = table.key_of(item.data)  # type: ignore[union-attr]
            rid = ledger.add_record(
                file_id=file_id,
                idx=item.index,
                line=item.line,
                table_name=TABLE,
                op="report",
                key=key,
                hash=item.digest,  # type: ignore[union-attr]
                state="final",
                outcome="ok",
            )
            ledger.accept(rid, TABLE, key, "report", item.digest)  # type: ignore[union-attr]
            if item.index % 50_000 == 49_999:
                ledger.commit()
        ledger.commit(durable=True)


def bench_dedupe(tmp: Path, n: int) -> str:
    from hzsyncd.reader import check_file, read_records

    base = tmp / "dedupe"
    data = write_ndjson(base / "data.ndjson", n)
    # No emulator: the service address is unreachable (port 9), so a record that were not a
    # duplicate would stop the send (exit 3) and library_send would raise.
    cfg = write_config(base / "run", "http://127.0.0.1:9/services/ReportService?wsdl")
    first = shutil.copy(data, drop_path(base / "run", "first.ndjson"))
    fill_as_sent(cfg, Path(first))

    def resend(rep: int) -> float:
        path = Path(shutil.copy(data, drop_path(base / "run", f"again-{rep}.ndjson")))
        return n / library_send(cfg, path, n)

    def parse(rep: int) -> float:
        started = time.perf_counter()
        check_file(data)
        count = sum(1 for _ in read_records(data))
        assert count == n
        return n / (time.perf_counter() - started)

    best = best_of({"resend": resend, "parse": parse})
    ratio = best["resend"] / best["parse"]
    return (
        f"dedupe {best['resend']:.0f} rec/s, {ratio:.2f} of parsing ({best['parse']:.0f} rec/s; "
        f"{n} records all duplicates; ledger filled through its API; "
        f"targets >= 50000 rec/s and >= 0.5)"
    )


# 4. ledger_growth ------------------------------------------------------------------------------


def fill_ledger(path: Path, rows: int) -> list[tuple[str, str]]:
    """`rows` accepted records through the ledger's API; returns (key, digest) of a sample."""
    import hashlib

    from hzsyncd.ledger import Ledger

    sample: list[tuple[str, str]] = []
    rng = random.Random(rows)
    picks = set(rng.sample(range(rows), min(rows, 5_000)))
    with Ledger.open(path, create=True) as ledger:
        file_id = ledger.add_file(
            sha256="0" * 64,
            name="fill.ndjson",
            origin="fill.ndjson",
            drop_dir="/",
            table_name=TABLE,
            op="report",
            state="final",
        )
        for n in range(rows):
            key = f"E{n:07d}"
            digest = hashlib.sha256(key.encode()).hexdigest()
            rid = ledger.add_record(
                file_id=file_id,
                idx=n,
                line=n + 1,
                table_name=TABLE,
                op="report",
                key=key,
                hash=digest,
                state="final",
                outcome="ok",
            )
            ledger.accept(rid, TABLE, key, "report", digest)
            if n in picks:
                sample.append((key, digest))
            if n % 50_000 == 49_999:
                ledger.commit()
        ledger.commit(durable=True)
    rng.shuffle(sample)
    return sample


def bench_ledger(tmp: Path, small: int, big: int) -> str:
    from hzsyncd.ledger import Ledger

    ledgers, samples = {}, {}
    for rows in (small, big):
        path = tmp / "ledger" / f"ledger-{rows}.db"
        samples[rows] = fill_ledger(path, rows)
        ledgers[rows] = Ledger.open(path, create=False)
    try:

        def side(rows: int, hit: bool) -> Callable[[int], float]:
            ledger, sample = ledgers[rows], samples[rows]

            def run(rep: int) -> float:
                started = time.perf_counter()
                for key, digest in sample:
                    if hit:  # a duplicate: found in `current`
                        d = ledger.decide(TABLE, key, "report", digest, None)
                    else:  # changed content: all three queries run
                        d = ledger.decide(TABLE, key, "report", "x" + digest[1:], None)
                    assert d.action == ("duplicate" if hit else "send"), d
                return (time.perf_counter() - started) / len(sample) * 1e6  # us per call

            return run

        # best_of takes the highest; these are costs, so take the lowest ourselves. A pass takes
        # about 0.1 s, so more of them cost little and ride out other load on the machine.
        costs: dict[str, float] = {}
        for rep in range(3 * REPEAT):
            for rows in (small, big) if rep % 2 == 0 else (big, small):
                for hit in (True, False):
                    name = f"{rows}-{hit}"
                    cost = side(rows, hit)(rep)
                    costs[name] = min(costs.get(name, cost), cost)
    finally:
        for ledger in ledgers.values():
            ledger.close()
    hit_ratio = costs[f"{big}-True"] / costs[f"{small}-True"]
    miss_ratio = costs[f"{big}-False"] / costs[f"{small}-False"]
    return (
        f"ledger_growth {max(hit_ratio, miss_ratio):.2f} (decide at {big} rows / {small} rows: "
        f"duplicate {costs[f'{big}-True']:.1f}/{costs[f'{small}-True']:.1f} us = {hit_ratio:.2f}, "
        f"changed {costs[f'{big}-False']:.1f}/{costs[f'{small}-False']:.1f} us = "
        f"{miss_ratio:.2f}; target <= 1.5)"
    )


# 5. memory -------------------------------------------------------------------------------------

# Runs `python -m hzsyncd ARGS…` and writes the process's VmHWM (kB) to stderr at its end.
PEAK_WRAPPER = r"""
import runpy, sys
sys.argv = ["hzsyncd", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("hzsyncd", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    with open("/proc/self/status") as status:
        hwm = next(s for s in status if s.startswith("VmHWM:")).split()[1]
    sys.stderr.write(f"\nBENCH-VmHWM {hwm}\n")
sys.exit(code)
"""


def peak_rss_kb(*args: str | Path) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
        check=False,
    )
    found = re.search(r"BENCH-VmHWM (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"hzsyncd {args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return int(found.group(1))


def bench_memory(tmp: Path, v_small: int, v_big: int, s_small: int, s_big: int) -> list[str]:
    base = tmp / "memory"
    cfg = write_config(base / "validate", "http://127.0.0.1:9/services/ReportService?wsdl")
    files = {}
    for size in (v_small, v_big):
        files[size] = base / f"validate-{size}.ndjson"
        write_ndjson_bytes(files[size], size)
    peaks: dict[int, int] = {}
    for size in (v_small, v_big):
        started = time.monotonic()
        peaks[size] = peak_rss_kb("validate", "-c", cfg, files[size])
        note(f"validate {size >> 20} MB: {time.monotonic() - started:.0f} s")
    for path in files.values():
        path.unlink()
    v_ratio = peaks[v_big] / peaks[v_small]
    out = [
        f"memory_validate {v_ratio:.2f} (peak RSS {peaks[v_big] / 1024:.0f} MiB on "
        f"{v_big >> 20} MB, {peaks[v_small] / 1024:.0f} MiB on {v_small >> 20} MB; CLI)"
    ]
    sends: dict[int, int] = {}
    with emulator(base) as wsdl:
        for count in (s_small, s_big):
            run = base / f"send-{count}"
            # max_in_flight 1: on loopback with no latency, the fastest (2 CPUs: 717 rec/s at 1,
            # 465 at 8), and the 200,000-record send is the longest step of the run.
            cfg = write_config(run, wsdl, max_in_flight=1)
            path = write_ndjson(drop_path(run, "data.ndjson"), count, start=count * 10)
            started = time.monotonic()
            sends[count] = peak_rss_kb("send", "-c", cfg, path)
            note(f"send {count}: {time.monotonic() - started:.0f} s")
    s_ratio = sends[s_big] / sends[s_small]
    out.append(
        f"memory_send {s_ratio:.2f} (peak RSS {sends[s_big] / 1024:.0f} MiB on {s_big} records, "
        f"{sends[s_small] / 1024:.0f} MiB on {s_small}; CLI, max_in_flight 1)"
    )
    return out


# Main ------------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for text in cpuinfo:
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    version = "hzsyncd (no git)"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "hzsyncd"], capture_output=True)
        if head.returncode == 0:
            version = f"hzsyncd {head.stdout.decode().strip()}" + ("+dirty" if dirty.stdout else "")
    return (
        f"machine: nproc {os.cpu_count()}, {model}, Python {platform.python_version()}, {version}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--only",
        action="append",
        choices=["overhead", "scaling", "dedupe", "ledger_growth", "memory"],
        help="run only this figure (repeatable)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="hzsyncd-bench-"))
    benches: dict[str, Callable[[], str | list[str]]] = {
        "overhead": lambda: bench_overhead(tmp, sizes["overhead"]),
        "scaling": lambda: bench_scaling(tmp, sizes["scaling_1"], sizes["scaling_8"]),
        "dedupe": lambda: bench_dedupe(tmp, sizes["dedupe"]),
        "ledger_growth": lambda: bench_ledger(tmp, sizes["ledger_small"], sizes["ledger_big"]),
        "memory": lambda: bench_memory(
            tmp,
            sizes["validate_small"],
            sizes["validate_big"],
            sizes["send_small"],
            sizes["send_big"],
        ),
    }
    crashed = False
    try:
        for name, bench in benches.items():
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            try:
                result = bench()
            except Exception:
                crashed = True
                print(f"{name} FAILED", flush=True)
                traceback.print_exc()
                continue
            for text in [result] if isinstance(result, str) else result:
                print(text, flush=True)
            note(f"{name}: {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(machine(), flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
