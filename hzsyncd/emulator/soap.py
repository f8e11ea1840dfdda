"""SOAP 1.1 on the wire: read a request envelope, write Axis 1.4 or JAX-WS RI replies and faults.

Replies are written as text, not serialised by lxml, to reproduce byte for byte what the two Java
stacks send: an empty element written open and closed (`<return></return>`), and Axis writing
every non-ASCII character as a numeric character reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from lxml import etree

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
RPC_NAMESPACE = "http://service.report"
DOCUMENT_NAMESPACE = "http://service.report/"
CONCURRENT_MODIFICATION = "java.util.ConcurrentModificationException"

# huge_tree: a Java stack takes a record of any size, and libxml2 would refuse text over 10 MB.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True, remove_comments=True
)


class BadRequest(Exception):
    """The request is no SOAP 1.1 envelope with an operation in its body."""


@dataclass(frozen=True)
class Request:
    """One call: the operation's local name and namespace, parameters by local name.

    A parameter sent as `xsi:nil` is None; an empty element is "".
    """

    operation: str
    namespace: str | None
    params: dict[str, str | None]


def parse_request(body: bytes, style: str) -> Request:
    """Read a request envelope; raises BadRequest.

    Headers (WS-Addressing, even with mustUnderstand) are ignored. In document style a parameter
    element with a namespace is dropped, as JAX-WS drops it: the elements are unqualified in
    the schema, so a qualified one is an unknown parameter and the real one reads as null.
    """
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadRequest(f"request is not XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise BadRequest("a SOAP message must not contain a document type declaration")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise BadRequest(f"not a SOAP 1.1 envelope: {root.tag}")
    soap_body = root.find(f"{{{SOAP_ENV}}}Body")
    entries = [] if soap_body is None else [e for e in soap_body if isinstance(e.tag, str)]
    if soap_body is None or not entries:
        raise BadRequest("the SOAP body holds no operation")
    call = entries[0]
    params: dict[str, str | None] = {}
    for element in call:
        if not isinstance(element.tag, str):
            continue
        name = etree.QName(element)
        if style == "document" and name.namespace is not None:
            continue
        params[name.localname] = _value(element, soap_body)
    op = etree.QName(call)
    return Request(op.localname, op.namespace, params)


def _value(element: etree._Element, soap_body: etree._Element) -> str | None:
    # SOAP encoding may send a value as a reference to a multiRef element elsewhere in the body.
    href = element.get("href", "")
    if href.startswith("#"):
        targets = soap_body.xpath("./*[@id=$id]", id=href[1:])
        if not targets:
            return None
        element = targets[0]
    if element.get(f"{{{XSI}}}nil") in ("true", "1"):
        return None
    return element.text or ""


def rpc_reply(operation: str, namespace: str | None, value: str | int) -> bytes:
    """Axis 1.4's reply: response element in the request's namespace, `<op>Return` typed."""
    xsd_type = "xsd:int" if isinstance(value, int) else "xsd:string"
    text = _axis_text(str(value))
    ns = escape(namespace or RPC_NAMESPACE, {'"': "&quot;"})
    return _axis_envelope(
        f'<ns1:{operation}Response soapenv:encodingStyle="{SOAP_ENCODING}" xmlns:ns1="{ns}">'
        f'<{operation}Return xsi:type="{xsd_type}">{text}</{operation}Return>'
        f"</ns1:{operation}Response>"
    )


def rpc_fault(faultcode: str, faultstring: str) -> bytes:
    """An Axis 1.4 fault, e.g. `rpc_fault("Server.userException", CONCURRENT_MODIFICATION)`."""
    return _axis_envelope(
        f"<soapenv:Fault><faultcode>soapenv:{faultcode}</faultcode>"
        f"<faultstring>{_axis_text(faultstring)}</faultstring><detail>"
        '<ns1:hostname xmlns:ns1="http://xml.apache.org/axis/">hzsyncd-emulator</ns1:hostname>'
        "</detail></soapenv:Fault>"
    )


def document_reply(operation: str, value: str | int) -> bytes:
    """JAX-WS RI's reply: wrapper in the service namespace, an unqualified `<return>`."""
    return _jaxws_envelope(
        f'<ns2:{operation}Response xmlns:ns2="{DOCUMENT_NAMESPACE}">'
        f"<return>{escape(str(value))}</return></ns2:{operation}Response>"
    )


def document_fault(faultcode: str, faultstring: str) -> bytes:
    """A JAX-WS RI fault, e.g. `document_fault("Client", "Cannot find dispatch method ...")`."""
    return _jaxws_envelope(
        '<S:Fault xmlns:ns4="http://www.w3.org/2003/05/soap-envelope">'
        f"<faultcode>S:{faultcode}</faultcode><faultstring>{escape(faultstring)}</faultstring>"
        "</S:Fault>"
    )


def reply(style: str, request: Request, value: str | int) -> bytes:
    """The reply to `request` in `style`."""
    if style == "rpc":
        return rpc_reply(request.operation, request.namespace, value)
    return document_reply(request.operation, value)


def fault(style: str, client: bool, faultstring: str) -> bytes:
    """A fault in `style`, blaming the client (a bad request) or the server."""
    if style == "rpc":
        return rpc_fault("Client" if client else "Server.userException", faultstring)
    return document_fault("Client" if client else "Server", faultstring)


def _axis_text(text: str) -> str:
    return "".join(c if c < "\x80" else f"&#x{ord(c):X};" for c in escape(text))


def _axis_envelope(body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        f'xmlns:xsi="{XSI}"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>'
    ).encode("ascii")


def _jaxws_envelope(body: str) -> bytes:
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f'<S:Envelope xmlns:S="{SOAP_ENV}"><S:Body>{body}</S:Body></S:Envelope>'
    ).encode("utf-8")
