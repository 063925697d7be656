"""asyncio's private names that dvrlink uses (guards: ``tests/test_compat_asyncio.py``; written
against CPython 3.11-3.13's selector event loop).

- ``loop._add_reader``: replace a datagram transport's reader, which reads one datagram per
  event-loop wake-up, by one that reads a batch (``batch_datagram_reads``). The public
  ``loop.add_reader`` refuses a descriptor a transport owns ("File descriptor is used by
  transport"). Upstream (CPython) could let a datagram transport read several datagrams per
  wake-up (``recvmmsg`` where the platform has it).
- ``transport._sock``: the socket object to ``recvfrom`` on, and to ``sendmsg`` a run of
  datagrams with UDP GSO (``datagram_socket``). The public ``transport.get_extra_info("socket")``
  is used for everything else (descriptor, buffer size); it returns a ``TransportSocket``, which
  has neither ``recvfrom`` nor ``sendmsg`` since Python 3.9 (``sendmsg`` warned before that).
  Upstream could let a datagram transport send several datagrams in one call.

A loop that is not asyncio's selector loop (uvloop, the proactor) keeps its own reader:
``batch_datagram_reads`` returns False. A selector loop or transport without these names raises
``dvrlink.compat.InternalsMoved``.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable
from typing import Any

from dvrlink.compat import moved

__all__ = ["batch_datagram_reads", "datagram_socket"]

_MISSING = object()


def _moved(name: str) -> Exception:
    version = f"in Python {platform.python_version()}"
    remedy = "run dvrlink on the Python version its image ships"
    return moved("asyncio", name, "reading datagrams in batches", version=version, remedy=remedy)


def batch_datagram_reads(
    transport: asyncio.BaseTransport,
    protocol: asyncio.DatagramProtocol,
    batch: int,
    recv_size: int,
    rcvbuf: int | None = None,
    *,
    first: Callable[[bytes, object], bool] | None = None,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
    read_many: Callable[[], tuple[list[bytes], Any]] | None = None,
    first_many: Callable[[list[bytes], Any], bool] | None = None,
) -> bool:
    """Have the running loop read up to ``batch`` datagrams (``recv_size`` bytes at most each)
    per wake-up from ``transport``'s socket, handing each to ``protocol.datagram_received`` (and
    an ``OSError`` to ``error_received``), as the transport's own reader does one at a time. With
    ``rcvbuf``, first ask the kernel for that receive buffer (it caps it at ``rmem_max``).

    ``first(data, addr)``, when given, sees each datagram before the protocol and returns True
    if it took it (the protocol then never sees it): a fast path for the bulk of the traffic
    around a protocol that parses every datagram. ``before()`` and ``after()``, when given, are
    called at the start and the end of each wake-up's reads, so that the datagrams' effects
    (datagrams to send in answer) can go out together, in the same event-loop pass.
    ``read_many()``, when given, replaces ``recvfrom``: each call returns the datagrams of one
    read and their sender (``session.gso.GroReceiver``: a coalesced run), and raises as
    ``recvfrom`` does; reads stop once they brought ``batch`` datagrams (or more: the last read's
    are all handed on). ``first_many(datagrams, addr)``, when given
    with it, sees each read's datagrams together before ``first`` sees them one by one, and
    returns True if it took them all.

    Closing the transport removes the reader (the transport removes whatever reader its
    descriptor has). Returns False, leaving the transport's reader, when the loop is not asyncio's
    selector loop or the transport is closing.

    Raises:
        InternalsMoved: the selector loop or its transport no longer has the names this uses.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, BaseSelectorEventLoop) or transport.is_closing():
        return False
    add_reader = getattr(loop, "_add_reader", _MISSING)
    sock = getattr(transport, "_sock", _MISSING)
    if not callable(add_reader):
        raise _moved("BaseSelectorEventLoop._add_reader()")
    if not isinstance(sock, socket.socket):
        raise _moved(f"{type(transport).__name__}._sock")
    public = transport.get_extra_info("socket")
    if public is None or public.fileno() != sock.fileno():
        raise _moved(f"{type(transport).__name__}._sock as the transport's own socket")
    if rcvbuf is not None:
        with contextlib.suppress(OSError):
            public.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    ready: Callable[[], None] = _reader(
        transport, protocol, sock, batch, recv_size, first, before, after, read_many, first_many
    )
    add_reader(public.fileno(), ready)
    return True


def datagram_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """The socket of a selector loop's datagram ``transport``, to ``sendmsg`` on; None when the
    loop is not asyncio's selector loop (its transports may not have one).

    Raises:
        InternalsMoved: the selector loop's transport no longer keeps it in ``_sock``.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, BaseSelectorEventLoop):
        return None
    sock = getattr(transport, "_sock", _MISSING)
    if not isinstance(sock, socket.socket):
        raise _moved(f"{type(transport).__name__}._sock")
    return sock


def _reader(
    transport: asyncio.BaseTransport,
    protocol: asyncio.DatagramProtocol,
    sock: socket.socket,
    batch: int,
    recv_size: int,
    first: Callable[[bytes, object], bool] | None,
    before: Callable[[], None] | None,
    after: Callable[[], None] | None,
    read_many: Callable[[], tuple[list[bytes], Any]] | None,
    first_many: Callable[[list[bytes], Any], bool] | None,
) -> Callable[[], None]:
    recvfrom = sock.recvfrom
    received = protocol.datagram_received

    def read() -> None:
        for _ in range(batch):
            try:
                data, addr = recvfrom(recv_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            if first is None or not first(data, addr):
                received(data, addr)
            if transport.is_closing():
                return

    def read_coalesced() -> None:
        assert read_many is not None
        left = batch
        while left > 0:
            try:
                datagrams, addr = read_many()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            left -= len(datagrams)
            if first_many is not None and first_many(datagrams, addr):
                if transport.is_closing():
                    return
                continue
            for data in datagrams:
                if first is None or not first(data, addr):
                    received(data, addr)
                if transport.is_closing():
                    return

    reads = read if read_many is None else read_coalesced

    def ready() -> None:
        if before is not None:
            before()
        reads()
        if after is not None:
            after()

    return ready
