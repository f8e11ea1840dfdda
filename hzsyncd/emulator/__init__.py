"""A local stand-in for the national ReportService: SOAP 1.1 over HTTP, both WSDL dialects.

    from hzsyncd.emulator import Emulator, Account

    with Emulator(style="rpc", accounts=[Account("demo", "demo", "320000")]) as emu:
        ...  # point a client at emu.wsdl_url

Imported by the CLI (`hzsyncd emulate`, `hzsyncd demo`) and the tests, never by the daemon.
"""

from hzsyncd.emulator.server import FAULT_MODES, Emulator
from hzsyncd.emulator.service import Account, ReportService
from hzsyncd.emulator.wsdl import STYLES

__all__ = ["FAULT_MODES", "STYLES", "Account", "Emulator", "ReportService"]
