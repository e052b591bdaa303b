"""Where the steering page listens: the socket, and whether an address is this machine only.

``localpref steer serve`` binds with ``listen`` before it loads the model, so that a port in use
fails at once, and hands the socket to uvicorn. On loopback (``is_loopback``) the app accepts
only the Host headers of ``allowed_hosts`` (DNS rebinding); elsewhere ``exposure_warning`` says
who can reach it.
"""

from __future__ import annotations

import ipaddress
import os
import socket

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host header values of this machine (IPv6 in brackets)


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: ``localhost``, 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def allowed_hosts(host: str) -> list[str] | None:
    """The Host header values to accept when serving on ``host``; None (any) off loopback."""
    if not is_loopback(host):
        return None
    own = host.strip("[]")
    own = f"[{own}]" if ":" in own else own.lower()
    return list(LOOPBACK_HOSTS) + ([own] if own not in LOOPBACK_HOSTS else [])


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` and listening (port 0: any free port); OSError if not.

    ``SO_REUSEADDR`` (as uvicorn sets on the sockets it binds itself): a server killed while a
    tab was connected leaves that connection in TIME_WAIT for about a minute, and without the
    option the port cannot be bound again until it expires. It does not let two servers share a
    port: a bind while another socket listens there still fails. Not on Windows, where the
    option would let a second socket take over a port in use.
    """
    address = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)  # connections made once the URL is printed wait here until uvicorn starts
    except OSError:
        sock.close()
        raise
    return sock


def page_url(host: str, port: int) -> str:
    """``http://HOST:PORT/``, an IPv6 address in brackets."""
    address = host.strip("[]")
    return f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"


def exposure_warning(host: str, port: int, out: object) -> str | None:
    """What serving on ``host`` exposes, or None on loopback. ``port``: the bound one (not 0)."""
    if is_loopback(host):
        return None
    return (f"serving on {host}, not only this machine: anyone who can reach port {port} can run the model "
            f"and write to {out}")


__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "exposure_warning", "is_loopback", "listen", "page_url"]
