"""The retriever replicas of RETRIEVAL_SERVER_URL: which one this machine starts, and when all are healthy.

A host is local when it is a loopback or wildcard address, localhost, this machine's hostname, or resolves to an
address this machine can bind. Local replicas are asked without a proxy; others through the caller's proxies.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from search_r1_launch.wrapper_log import LaunchError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Replica:
    url: str
    local: bool
    port: int
    bind: str  # the address a retriever started here binds ("" for a remote one)


def _addresses(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _owned(address: Address) -> bool:
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((str(address), 0))  # only an address of this machine can be bound
        except OSError:
            return False
    return True


def classify(url: str) -> Replica:
    """One entry of RETRIEVAL_SERVER_URL; a LaunchError for one that is not an http(s) URL with a host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port, parts = None, parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LaunchError(
            f"RETRIEVAL_SERVER_URL entry '{url}' is not an http(s) URL with a host and a valid port; fix "
            "RETRIEVAL_SERVER_URL"
        )
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return Replica(url, True, port, "127.0.0.1")
    found = _addresses(host)
    if not (host == socket.gethostname().lower() or any(_owned(address) for address in found)):
        return Replica(url, False, port, "")
    if len(found) == 1 and str(found[0]) == host:  # an address literal: bind that very address
        bind = host
    elif found and all(address.is_loopback for address in found):
        bind = "127.0.0.1" if ipaddress.ip_address("127.0.0.1") in found else str(found[0])
    else:
        bind = "0.0.0.0"
    return Replica(url, True, port, bind)


def replicas(urls: str) -> list[Replica]:
    """Every entry of a comma-separated RETRIEVAL_SERVER_URL, trailing slashes dropped."""
    entries = [part.strip().rstrip("/") for part in urls.split(",")]
    found = [classify(entry) for entry in entries if entry]
    if not found:
        raise LaunchError(f"RETRIEVAL_SERVER_URL names no URL (got '{urls}')")
    return found


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(replica: Replica, timeout_s: float = 5) -> bool:
    """GET /health answers 2xx (a local replica directly, a remote one through the caller's proxies)."""
    opener = _DIRECT if replica.local else urllib.request.build_opener()
    try:
        with opener.open(f"{replica.url}/health", timeout=timeout_s) as reply:
            return bool(200 <= reply.status < 300)
    except (OSError, ValueError):
        return False
