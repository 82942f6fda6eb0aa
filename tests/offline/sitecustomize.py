"""Network guard for test runs: refuse every connection that leaves this machine.

tests/notebook_runner.py puts this folder on PYTHONPATH, so Python imports this file at
start-up in the runner and in every kernel it launches. Any socket connection (or DNS
lookup) to anything but loopback raises ``OfflineViolation``: a notebook that needs the
internet fails its test, so the course is known to work on a workshop's bad wifi.
"""

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "ip6-localhost", "ip6-loopback", ""}


class OfflineViolation(ConnectionRefusedError):
    """A connection to a non-loopback address was attempted during an offline test run."""


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or str(host).lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost


def _guard(address) -> None:
    # AF_UNIX addresses are paths (str/bytes): local by definition
    if isinstance(address, tuple) and not _is_loopback(address[0]):
        raise OfflineViolation(f"offline test run: connection to {address[0]!r} refused")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard(address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard(address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        raise OfflineViolation(f"offline test run: DNS lookup of {host!r} refused")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo
