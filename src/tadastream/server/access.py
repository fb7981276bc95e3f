"""Who may use a server that has no API key: the Origin and Host rules.

A key-less server on a workstation is reachable by every web page the user opens. Browsers send
an ``Origin`` with cross-site POSTs and WebSocket handshakes (and a multipart POST needs no
preflight), so without a check any site could speak, store or replace voices. A page on a name
that its attacker re-points at 127.0.0.1 (DNS rebinding) is "same origin" to the browser, so the
``Host`` a request names is checked too. Clients outside a browser (SDKs, curl, the voice-agent
frameworks) send no ``Origin`` and name the server as they reach it, so they are unaffected.

With an API key the key decides, as before: a page cannot know it.
"""

from __future__ import annotations

import dataclasses
import ipaddress

#: Host names that always mean this machine (RFC 6761 reserves ``*.localhost`` for loopback).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_UNSPECIFIED = frozenset({"0.0.0.0", "::", ""})


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a request is refused: an error ``code`` and a one-line ``message`` that says how to fix it."""

    code: str
    message: str


def host_name(host: str) -> str:
    """The name part of a ``Host`` header or origin netloc, lower-case, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000; an unclosed bracket names nothing, so nothing matches it
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host  # a bare IPv6 address, or a name without port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class AccessRules:
    """The Origin and Host checks of one key-less server.

    ``bind_host`` is the address it listens on, ``allowed_hosts`` further names it may be reached
    by (``*`` for any), ``cors_origins`` the pages besides its own that may call it (``*`` for any).
    """

    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()

    def host_refusal(self, host: str | None) -> Refusal | None:
        """None when ``host`` (the request's ``Host`` header) names this server, else why not.

        A missing Host (an HTTP/1.0 client) is allowed: every browser sends one. An IP address is
        allowed when the server listens on all addresses (0.0.0.0, ::), since each of them is its
        own; a name must be loopback, the bound address or listed, because a name is what DNS
        rebinding turns against the user.
        """
        if host is None or "*" in self.allowed_hosts:
            return None
        name = host_name(host)
        bound = host_name(self.bind_host)
        if _is_loopback(name) or name == bound or name in (h.lower() for h in self.allowed_hosts):
            return None
        if bound in _UNSPECIFIED and _is_ip(name):
            return None
        shown = host if len(host) <= 100 else host[:100] + "..."
        return Refusal(
            "forbidden_host",
            f"Host {shown!r} does not name this server; if it is its name, start it with --allowed-host {name}"
            " (or set --api-key)",
        )

    def origin_refusal(self, origin: str | None, host: str | None) -> Refusal | None:
        """None when a request from ``origin`` may be served: no Origin, the server's own page
        (same host and port as ``host``), or one listed with ``--cors-origin``; else why not."""
        if origin is None:
            return None
        origin = origin.strip()
        if "*" in self.cors_origins or origin in self.cors_origins:
            return None
        if host is not None:  # compared as text: a hostile Origin must not make a URL parser raise
            scheme, _, netloc = origin.partition("://")
            if scheme.lower() in ("http", "https") and netloc.lower() == host.strip().lower():
                return None
        shown = origin if len(origin) <= 100 else origin[:100] + "..."
        return Refusal(
            "forbidden_origin",
            f"pages from {shown} may not use this server; start it with --cors-origin {shown} (or set --api-key)",
        )

    def refusal(self, headers: dict[str, str]) -> Refusal | None:
        """The first rule a request with these (lower-case) headers breaks, or None."""
        host = headers.get("host")
        return self.host_refusal(host) or self.origin_refusal(headers.get("origin"), host)
