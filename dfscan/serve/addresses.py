"""Where a callback may go: the outside world, and the hosts or networks an operator allows.

A callback URL is parsed once (http or https, a host, a port), its host resolved
once, and every address of the answer checked against the refused ranges
(loopback, link-local, private, shared, multicast, reserved, documentation;
IPv4, IPv6, and IPv4 inside IPv6: mapped, compatible, NAT64, 6to4). The
connection then goes to an address that was checked (:attr:`Target.addresses`),
never to the answer of a second lookup, so a name that changes its answer
between check and connect (DNS rebinding) reaches nothing new. The URL is
checked when the scan is submitted and again before every delivery.

Numeric spellings that the C resolver takes for IPv4 (``2130706433``,
``0x7f.1``, ``0177.0.0.1``, ``127.1``) are read as the address they spell; a
trailing dot is dropped; names are IDNA-encoded before lookup.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from dfscan.serve.errors import CallbackRefused

__all__ = ["AddressPolicy", "Target", "refused_reason", "resolve"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges a callback never reaches unless the operator allows them: (why, networks).
_REFUSED_V4 = (
    ("unspecified (this network)", ("0.0.0.0/8",)),
    ("loopback", ("127.0.0.0/8",)),
    ("link-local", ("169.254.0.0/16",)),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (carrier-grade NAT)", ("100.64.0.0/10",)),
    ("reserved", ("192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4")),
    ("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")),
    ("multicast", ("224.0.0.0/4",)),
)
_REFUSED_V6 = (
    ("unspecified", ("::/128",)),
    ("loopback", ("::1/128",)),
    ("link-local", ("fe80::/10",)),
    ("private", ("fc00::/7", "fec0::/10", "64:ff9b:1::/48")),
    ("multicast", ("ff00::/8",)),
    ("reserved", ("::/8", "100::/64", "2001::/23", "5f00::/16")),
    ("documentation", ("2001:db8::/32", "3fff::/20")),
)
_TABLE: tuple[tuple[str, tuple[Network, ...]], ...] = tuple(
    (why, tuple(ipaddress.ip_network(n) for n in nets)) for why, nets in (*_REFUSED_V4, *_REFUSED_V6)
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What the C resolver reads as an IPv4 address (inet_aton): 1 to 4 parts, decimal, octal or hex.
_NUMERIC_V4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}")
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, NAT64 or 6to4 address reaches, if ``ip`` is one."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(ip.packed[12:])
    return ip.sixtofour


def refused_reason(ip: IPAddress) -> str | None:
    """Why a callback must not reach ``ip`` (``"loopback"``, ``"private"`` ...), or ``None``: a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # without a zone id
        inner = _embedded_v4(ip)
        if inner is not None:  # judged by the IPv4 address the packets go to
            why = refused_reason(inner)
            return None if why is None else f"{why} (IPv4 {inner} inside IPv6)"
    for why, networks in _TABLE:
        if any(ip in net for net in networks):
            return why
    if not ip.is_global:
        return "not globally routable"
    return None


def _ip_literal(host: str) -> IPAddress | None:
    """``host`` as an address when it is one: standard forms, and the numeric IPv4 spellings inet_aton takes."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host`` (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect (an address that was checked) and what to send."""

    scheme: str
    host: str  # the Host header's and TLS's name: an IDNA-encoded name, or an address
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # checked, in the resolver's order
    userinfo: tuple[str, str] | None = None  # user and password for basic authentication

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_allow(entries: Iterable[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    """Operator entries -> (host names, networks); an address is a one-address network."""
    names, networks = set(), []
    for entry in entries:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return frozenset(names), tuple(networks)


class AddressPolicy:
    """The refused ranges, less what the operator allows (``--callback-allow``: host names, addresses, networks)."""

    def __init__(self, allow: Iterable[str] = (), *,
                 resolver: Callable[[str, int], list[IPAddress]] = resolve) -> None:
        self.allowed_names, self.allowed_networks = parse_allow(allow)
        self.resolver = resolver

    def address_refused(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused under this policy, or ``None``."""
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if any(plain.version == net.version and plain in net for net in self.allowed_networks):
            return None
        return refused_reason(ip)

    def check(self, url: str) -> Target:
        """``url`` parsed, resolved once and every address checked; raises :class:`CallbackRefused`."""
        scheme, host, port, path, userinfo = _split(url)
        literal = _ip_literal(host)
        if literal is not None:
            addresses = [literal]
            host = str(literal)
        else:
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError):
                raise CallbackRefused(f"callback host {host!r} does not resolve") from None
            if not addresses:
                raise CallbackRefused(f"callback host {host!r} does not resolve")
        if host not in self.allowed_names:
            for ip in addresses:
                why = self.address_refused(ip)
                if why is not None:
                    raise CallbackRefused(f"refused: address {ip} is {why}")
        connect = (ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
                   for ip in addresses)
        return Target(scheme, host, port, path, tuple(dict.fromkeys(str(ip) for ip in connect)), userinfo)


def _split(url: str) -> tuple[str, str, int, str, tuple[str, str] | None]:
    """(scheme, host, port, path and query, userinfo) of an http(s) URL; a refusal names what is wrong."""
    if not isinstance(url, str) or _FORBIDDEN_CHARS.search(url):
        raise CallbackRefused("callback URL must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback URL is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CallbackRefused("callback URL must be an http:// or https:// URL")
    if parts.netloc.count("@") > 1:
        raise CallbackRefused("callback URL has more than one '@' before its host")
    host = _host(parts.hostname or "")
    userinfo = (unquote(parts.username or ""), unquote(parts.password or "")) if "@" in parts.netloc else None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), path, userinfo


def _host(raw: str) -> str:
    """The host as it is looked up: lower case, no trailing dot, IDNA-encoded; addresses as they are."""
    host = raw[:-1] if raw.endswith(".") else raw
    if not host:
        raise CallbackRefused("callback URL has no host")
    if ":" in host:  # an IPv6 literal (urlsplit took off the brackets)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise CallbackRefused(f"callback host [{host}] is not an IPv6 address") from None
        return host
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise CallbackRefused(f"callback host {host!r} is not a valid host name") from None
    if ascii_host.endswith("."):  # a trailing ideographic or full-width full stop, now "."
        ascii_host = ascii_host[:-1]
    if _ip_literal(ascii_host) is None and not _NAME.fullmatch(ascii_host):
        raise CallbackRefused(f"callback host {host!r} is not a valid host name")
    return ascii_host
