"""Where chatlane may send a webhook: public addresses only (no SSRF).

A target's host is resolved once; every address it resolves to must be global, checked
after unwrapping the IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4,
Teredo); the sender then connects to the address that was checked, never resolving
again. Numeric spellings of an address (``2130706433``, ``0x7f.1``, ``0177.0.0.1``) are
whatever the resolver makes of them, and are checked like any other result.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class TargetRefused(ValueError):
    """The URL may not be sent to (a non-public address, a scheme other than http(s))."""


class TargetUnresolved(TargetRefused):
    """The URL's host did not resolve: maybe only for now (a DNS outage)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL and the address checked for it."""

    url: str
    scheme: str
    host: str
    port: int
    address: str
    path: str

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host: connecting to it never
        resolves the name again (send ``host_header`` and, for https, ``server_hostname``)."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{address}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        return self.host if self.port in (80, 443) else f"{self.host}:{self.port}"

    @property
    def server_hostname(self) -> str | None:
        """The name TLS checks the certificate against (None for plain http)."""
        return self.host if self.scheme == "https" else None


def embedded(ip: Address) -> Address:
    """The IPv4 address an IPv6 one carries, if it carries one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64 or ip in NAT64_LOCAL:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (``localhost``, or an address, IPv6 zone and all) is this machine."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_public(ip: Address) -> bool:
    """Routable on the Internet: not loopback, private, link-local (cloud metadata),
    shared (CGNAT), multicast, reserved or unspecified."""
    inner = embedded(ip)
    return bool(inner.is_global) and not (
        inner.is_multicast or inner.is_reserved or inner.is_unspecified
    )


def parse(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an http(s) URL; else ``TargetRefused``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("a webhook URL must be http(s)://host/…")
    if parts.username or parts.password:
        raise TargetRefused("a webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused(f"bad port in {url!r}") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, parts.hostname, port, path


async def check(url: str, *, allow_private: bool) -> None:
    """Refuse (``TargetRefused``), when it is registered, a URL chatlane will send to: not
    http(s), or (unless ``allow_private``) a host that does not resolve to public addresses
    alone. Each send checks again (``resolve``): DNS may change."""
    parse(url)
    if not allow_private:
        await resolve(url)


async def resolve(url: str, *, allow_private: bool = False) -> Target:
    """Check ``url`` and pick the address to connect to; ``TargetRefused`` if any address
    the host resolves to is not public (unless ``allow_private``)."""
    scheme, host, port, path = parse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetUnresolved(f"{host} does not resolve ({exc})") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise TargetUnresolved(f"{host} does not resolve")
    if not allow_private:
        refused = [str(a) for a in addresses if not is_public(a)]
        if refused:
            raise TargetRefused(f"{host} resolves to a non-public address ({refused[0]})")
    return Target(url, scheme, host, port, str(addresses[0]), path)
