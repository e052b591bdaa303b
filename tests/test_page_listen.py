"""The steering page's listening socket (``localpref.page.listen``), on loopback addresses only.

A server killed while a tab was connected leaves that connection in TIME_WAIT; the next server
must bind the port at once, and must still be refused while another socket listens there.
"""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from localpref.page.listen import allowed_hosts, exposure_warning, is_loopback, listen, page_url


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


LOOPBACKS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not has_ipv6_loopback(),
                                                                         reason="no IPv6 loopback here"))]


def leave_time_wait(server: socket.socket) -> None:
    """Accept one connection and close it from the server side first, as a killed server does: the
    server's end of that connection stays in TIME_WAIT (about a minute on Linux)."""
    host, port = server.getsockname()[:2]
    with socket.create_connection((host, port), timeout=10) as client:
        conn, _ = server.accept()
        conn.close()  # the server closes first ...
        assert client.recv(1) == b""  # ... the client sees it ...
    server.close()  # ... and closes too; the listening socket goes as the killed process's would


@pytest.mark.skipif(sys.platform == "win32", reason="SO_REUSEADDR means something else on Windows")
@pytest.mark.parametrize("host", LOOPBACKS)
def test_the_port_of_a_killed_server_can_be_bound_again_at_once(host):
    first = listen(host, 0)
    port = first.getsockname()[1]
    leave_time_wait(first)
    with socket.socket(first.family) as plain:  # without SO_REUSEADDR: what `steer serve` did before
        with pytest.raises(OSError) as refused:
            plain.bind((host, port))
        assert refused.value.errno == errno.EADDRINUSE  # so the TIME_WAIT is really there
    again = listen(host, port)
    again.close()


@pytest.mark.parametrize("host", LOOPBACKS)
def test_a_port_another_socket_listens_on_is_refused(host):
    with listen(host, 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(OSError) as refused:
            listen(host, port)
        assert refused.value.errno == errno.EADDRINUSE


def test_loopback_addresses_are_this_machine_only():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"):
        assert is_loopback(host), host
        assert exposure_warning(host, 8765, "s.jsonl") is None, host
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.org", "localhost.example.org"):
        assert not is_loopback(host), host
        assert allowed_hosts(host) is None, host
    assert "[::1]" in allowed_hosts("::1") and "127.0.0.1" in allowed_hosts("::1")
    assert "127.0.0.2" in allowed_hosts("127.0.0.2")


def test_the_warning_names_the_port_it_is_given_and_urls_bracket_ipv6():
    # `steer serve --port 0` passes the port the OS picked (the socket's), never 0
    assert "anyone who can reach port 43210 can run the model and write to s.jsonl" in exposure_warning(
        "0.0.0.0", 43210, "s.jsonl")
    assert page_url("::1", 8765) == "http://[::1]:8765/" and page_url("[::1]", 8765) == "http://[::1]:8765/"
    assert page_url("127.0.0.1", 8765) == "http://127.0.0.1:8765/"
