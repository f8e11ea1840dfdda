"""The commands not covered elsewhere: help, validate, init, ip del, emulate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import Invoke, data_calls, drop, ndjson, write_config
from daemon_helpers import child_env, wait_for

from hzsyncd.cli import main
from hzsyncd.emulator import Emulator

COMMANDS = [
    "run",
    "send",
    "validate",
    "status",
    "failures",
    "history",
    "retry",
    "ip",
    "check",
    "init",
    "emulate",
    "demo",
]


def test_every_command_has_help_and_is_in_the_readme(hzsyncd: Invoke) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    listed = hzsyncd("--help").stdout
    for name in COMMANDS:
        assert name in main.commands  # type: ignore[attr-defined]
        assert name in listed
        result = hzsyncd(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout
        assert f"hzsyncd {name}" in readme


def test_validate_names_file_line_and_field_and_sends_nothing(
    hzsyncd: Invoke, tmp_path: Path, spool: Path
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/nothing?wsdl")
    path = drop(
        spool, "org_info", "v.ndjson", ndjson([{"org_id": "E1"}, {"org_name": "无键"}]) + "{oops\n"
    )

    result = hzsyncd("validate", "-c", config, path)

    assert result.exit_code == 1
    assert f"{path}:2: org_id:" in result.stdout
    assert f"{path}:3:" in result.stdout and "invalid JSON" in result.stdout
    assert path.exists()


def test_validate_of_a_good_file_exits_0(hzsyncd: Invoke, tmp_path: Path, spool: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/nothing?wsdl")
    path = drop(spool, "org_info", "v.json", json.dumps([{"org_id": "E1"}]))
    result = hzsyncd("validate", "-c", config, "--json", path)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [{"file": str(path), "records": 1, "problems": []}]


def test_init_creates_every_folder_and_the_ledger(hzsyncd: Invoke, tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/nothing?wsdl")

    result = hzsyncd("init", "-c", config)

    assert result.exit_code == 0
    for folder in (
        "org_info",
        "org_info/delete",
        "org_info/failed",
        "org_info/.work",
        "service_credit/delete/failed",
    ):
        assert (tmp_path / "spool" / folder).is_dir(), folder
    assert (tmp_path / "var" / "ledger.db").is_file()
    assert hzsyncd("init", "-c", config).exit_code == 0  # again: nothing to do


def test_missing_ledger_beside_done_files_is_refused_not_recreated(
    hzsyncd: Invoke, tmp_path: Path, spool: Path
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/nothing?wsdl")
    drop(spool, "org_info/done/2026-01-01", "old.ndjson", ndjson([{"org_id": "E1"}]))
    path = drop(spool, "org_info", "new.ndjson", ndjson([{"org_id": "E1"}]))

    result = hzsyncd("send", "-c", config, path)

    assert result.exit_code == 2
    assert "ledger not found" in result.stderr and "init --new-ledger" in result.stderr
    assert not (tmp_path / "var" / "ledger.db").exists()


def test_ip_del_and_list_say_what_happened(hzsyncd: Invoke, tmp_path: Path) -> None:
    with Emulator(port=0, allow=["127.0.0.1", "10.0.0.9"]) as emu:
        config = write_config(tmp_path, emu.wsdl_url)
        assert hzsyncd("ip", "list", "-c", config).stdout.split() == ["127.0.0.1", "10.0.0.9"]
        removed = hzsyncd("ip", "del", "-c", config, "10.0.0.9")
        assert removed.exit_code == 0 and removed.stdout.strip() == "1: deleted"
        again = hzsyncd("ip", "add", "-c", config, "127.0.0.1")
        assert again.exit_code == 0 and "already on the list" in again.stdout
        wrong = write_config(tmp_path, emu.wsdl_url, account={"password": "wrong"})
        refused = hzsyncd("ip", "add", "-c", wrong, "127.0.0.2")
        assert refused.exit_code == 2 and "wrong user or password" in refused.stdout


def test_ip_commands_without_a_password_are_a_configuration_error(
    hzsyncd: Invoke, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/x?wsdl", account={"password": ""})
    result = hzsyncd("ip", "list", "-c", config)
    assert result.exit_code == 2 and "password" in result.stderr


@pytest.mark.parametrize("style", ["rpc", "document"])
def test_emulate_serves_its_wsdl_until_terminated(tmp_path: Path, style: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "hzsyncd", "emulate", "--port", "0", "--style", style],
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    ) as proc:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        url = banner.split(" at ")[1].strip()
        reply = wait_for(lambda: requests.get(url, timeout=5), 10, "the WSDL")
        assert reply.status_code == 200 and "reportFlatInfo" in reply.text
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_failures_history_status_and_retry_tell_one_rejection_story(
    hzsyncd: Invoke, tmp_path: Path, spool: Path
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"]) as emu:
        config = write_config(tmp_path, emu.wsdl_url, retry={"relation_retry_hours": 0})
        resident = {"flat_id": "F7", "org_id": "O7"}
        path = drop(spool, "org_in_flat", "r.ndjson", ndjson([resident]))
        assert hzsyncd("send", "-c", config, path).exit_code == 1  # deferred
        assert hzsyncd("send", "-c", config, path).exit_code == 1  # retry hours over: rejected

        failed = hzsyncd("failures", "-c", config)
        assert "org_in_flat r.ndjson:1 key=F7|O7 [2001]: error-2001：" in failed.stdout
        story = hzsyncd("history", "-c", config, "org_in_flat", "F7|O7")
        assert "nothing accepted" in story.stdout and story.stdout.count("error-2001") >= 2
        status = json.loads(hzsyncd("status", "-c", config, "--json").stdout)
        assert status["tables"]["org_in_flat"]["rejected"] == 1
        assert status["daemon"]["running"] is None

        parents = [
            drop(spool, "flat_info", "f.ndjson", ndjson([{"flat_id": "F7"}])),
            drop(spool, "service_org_info", "o.ndjson", ndjson([{"org_id": "O7"}])),
        ]
        assert hzsyncd("send", "-c", config, *parents).exit_code == 0
        retried = hzsyncd("retry", "-c", config, "--table", "org_in_flat")

        assert retried.exit_code == 0, retried.output
        assert "key=F7|O7 (r.ndjson): accepted" in retried.stdout
        assert (
            "last accepted: report"
            in hzsyncd("history", "-c", config, "org_in_flat", "F7|O7").stdout
        )
        assert data_calls(emu)[-1]["response"] == ""
        assert hzsyncd("retry", "-c", config).stdout.strip().endswith("0 record(s) retried")


def test_check_passes_when_all_is_well_and_exits_4_when_the_ip_is_not_allowed(
    hzsyncd: Invoke, tmp_path: Path
) -> None:
    with Emulator(port=0, allow=["127.0.0.1"]) as emu:
        config = write_config(tmp_path, emu.wsdl_url)
        assert hzsyncd("check", "-c", config).exit_code == 2  # folders and ledger missing
        hzsyncd("init", "-c", config)
        good = hzsyncd("check", "-c", config)
        assert good.exit_code == 0, good.stdout
        assert "127.0.0.1 is on the allow-list" in good.stdout
        hzsyncd("ip", "del", "-c", config, "127.0.0.1")
        refused = hzsyncd("check", "-c", config)
        assert refused.exit_code == 4 and "not on the allow-list" in refused.stdout
