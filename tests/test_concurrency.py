"""Concurrent sending: per-key order, the rate limit, and versions that wait for earlier ones."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from conftest import Invoke, data_calls, drop, ndjson, write_config

from hzsyncd.emulator import Emulator


def test_versions_of_each_key_arrive_in_file_order_with_8_in_flight(
    hzsyncd: Invoke, tmp_path: Path, spool: Path
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"], latency_ms=3) as emu:
        config = write_config(tmp_path, emu.wsdl_url, service={"max_in_flight": 8})
        keys = [f"E{k:02}" for k in range(40)]
        records = [{"org_id": k, "org_name": f"v{v}"} for v in range(1, 5) for k in keys]
        path = drop(spool, "org_info", "versions.ndjson", ndjson(records))

        result = hzsyncd("send", "-c", config, path)

        assert result.exit_code == 0, result.output
        seen: dict[str, list[str]] = defaultdict(list)
        for call in data_calls(emu):
            record = json.loads(call["json"])
            seen[record["org_id"]].append(record["org_name"])
        assert all(seen[k] == ["v1", "v2", "v3", "v4"] for k in keys), dict(seen)
        order = [json.loads(c["json"])["org_id"] for c in data_calls(emu)]
        assert order[:40] != keys, "no two calls overlapped: concurrency was not exercised"


def test_rate_limit_spaces_the_calls(hzsyncd: Invoke, tmp_path: Path, spool: Path) -> None:
    with Emulator(port=0, allow=["127.0.0.1"]) as emu:
        config = write_config(tmp_path, emu.wsdl_url, service={"rate_limit": 25})
        path = drop(spool, "org_info", "r.ndjson", ndjson([{"org_id": f"E{i}"} for i in range(20)]))

        assert hzsyncd("send", "-c", config, path).exit_code == 0

        times = sorted(c["time"] for c in data_calls(emu))
        assert len(times) == 20
        # 20 calls at 25 per second cannot span less than 19/25 s (a little slack for clocks).
        assert times[-1] - times[0] >= 19 / 25 * 0.9


def test_a_later_copy_waits_for_the_deferred_earlier_one_and_is_then_a_duplicate(
    hzsyncd: Invoke, tmp_path: Path, spool: Path
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"]) as emu:
        config = write_config(tmp_path, emu.wsdl_url)
        resident = {"flat_id": "F9", "org_id": "O9", "in_time": "2020-01"}
        first = drop(spool, "org_in_flat", "first.ndjson", ndjson([resident]))
        assert hzsyncd("send", "-c", config, first).exit_code == 1  # parent missing: deferred
        # The same record in another file (other bytes, so not a resumed copy of the first).
        second = drop(spool, "org_in_flat", "second.json", json.dumps(resident, indent=2))
        assert hzsyncd("send", "-c", config, second).exit_code == 1  # waits behind the first
        assert len(data_calls(emu)) == 1

        parents = [
            drop(spool, "flat_info", "f.ndjson", ndjson([{"flat_id": "F9"}])),
            drop(spool, "service_org_info", "o.ndjson", ndjson([{"org_id": "O9"}])),
        ]
        assert hzsyncd("send", "-c", config, *parents).exit_code == 0
        assert hzsyncd("send", "-c", config, first).exit_code == 0
        result = hzsyncd("send", "-c", config, "--json", second)

        assert result.exit_code == 0
        assert json.loads(result.stdout)["files"][0]["duplicate"] == 1
        calls = [c for c in data_calls(emu) if c["method"] == "reportOrgInFlat"]
        assert [c["response"][:10] for c in calls] == ["error-2001", ""]
