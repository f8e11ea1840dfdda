"""`hzsyncd check`: config, folders, ledger, WSDL, and whether this host's IP is allowed."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import click

from hzsyncd.config import Config
from hzsyncd.errors import HzsyncdError, TransportFailure
from hzsyncd.ledger import Ledger
from hzsyncd.session import make_client
from hzsyncd.spool import Spool


@dataclass
class Finding:
    what: str
    ok: bool
    detail: str
    exit_code: int = 0


def _local_address(url: str) -> str | None:
    """The address this host uses towards the service (behind NAT the service sees another)."""
    parsed = urlparse(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parsed.hostname or "127.0.0.1", parsed.port or 80))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def run_checks(config: Config) -> list[Finding]:
    findings = [Finding("config", True, str(config.source or "built-in defaults"))]
    missing = Spool(config.spool.root, config.tables).missing()
    findings.append(
        Finding(
            "folders",
            not missing,
            f"{len(missing)} missing, e.g. {missing[0]} (run hzsyncd init)"
            if missing
            else f"{config.spool.root}: all present",
            2 if missing else 0,
        )
    )
    findings.append(_check_ledger(config))
    client = make_client(config)
    try:
        client.load()
        findings.append(Finding("wsdl", True, config.service.wsdl))
    except TransportFailure as exc:
        findings.append(Finding("wsdl", False, str(exc), 3))
        return findings
    findings.append(_check_ip(config, client.get_ip))
    return findings


def _check_ledger(config: Config) -> Finding:
    if not config.ledger.path.exists():
        return Finding("ledger", False, f"{config.ledger.path}: not found (run hzsyncd init)", 2)
    try:
        with Ledger.open(config.ledger.path, create=False) as ledger:
            verdict = ledger.integrity()
    except HzsyncdError as exc:
        return Finding("ledger", False, str(exc), 2)
    ok = verdict == "ok"
    return Finding("ledger", ok, f"{config.ledger.path}: integrity {verdict}", 0 if ok else 2)


def _check_ip(config: Config, get_ip: Callable[[str, str], list[str] | int]) -> Finding:
    account = config.account
    if not account.user_id or account.password is None:
        return Finding("ip", True, "not checked: no [account] user_id and password")
    try:
        allowed = get_ip(account.user_id, account.password)
    except TransportFailure as exc:
        return Finding("ip", False, str(exc), 3)
    if isinstance(allowed, int):
        words = {-1: "wrong user or password", -2: "account disabled"}
        return Finding("ip", False, f"getIP: {allowed}: {words.get(allowed, 'refused')}", 2)
    mine = _local_address(config.service.endpoint or config.service.wsdl)
    if mine in allowed:
        return Finding("ip", True, f"{mine} is on the allow-list ({', '.join(allowed)})")
    return Finding(
        "ip",
        False,
        f"this host ({mine}, as seen locally) is not on the allow-list ({', '.join(allowed)}); "
        "behind NAT the service sees another address",
        4,
    )


def print_checks(findings: list[Finding]) -> int:
    for finding in findings:
        click.echo(f"{'ok  ' if finding.ok else 'FAIL'} {finding.what:8} {finding.detail}")
    return next((f.exit_code for f in findings if not f.ok), 0)
