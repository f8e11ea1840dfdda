"""The WSDL and schema each style publishes, pointed at the emulator's own URL.

The templates are the generated reference documents (shared/reference/) unchanged: Axis 1.4
rpc/encoded, and JAX-WS RI document/literal wrapped with its schema on a second URL. Only the
service address is replaced, as a live server writes the URL it was asked on.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

STYLES = ("rpc", "document")

# The address the reference documents were generated for; Axis also uses it as targetNamespace.
_REFERENCE_URL = "http://jshz.sme.gov.cn/services/ReportService"
_REFERENCE_XSD = 'schemaLocation="jaxws-document-literal.xsd"'


@cache
def _template(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def wsdl_for(style: str, url: str) -> bytes:
    """The WSDL of `style` ("rpc" or "document") for a service at `url` (no query)."""
    if style == "rpc":
        text = _replace(_template("axis-rpc-encoded.wsdl"), _REFERENCE_URL, url)
    elif style == "document":
        text = _replace(_template("jaxws-document-literal.wsdl"), _REFERENCE_URL, url)
        text = _replace(text, _REFERENCE_XSD, f'schemaLocation="{url}?xsd=1"')
    else:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")
    return text.encode("utf-8")


def schema_for(style: str) -> bytes | None:
    """The schema served at `?xsd=1`, or None for a style that has none."""
    if style != "document":
        return None
    return _template("jaxws-document-literal.xsd").encode("utf-8")


def _replace(text: str, old: str, new: str) -> str:
    # A template edited so that its placeholder is gone would otherwise publish the real
    # service's address, and clients would quietly talk to the internet.
    if old not in text:
        raise RuntimeError(f"WSDL template lacks {old!r}")
    return text.replace(old, new)
