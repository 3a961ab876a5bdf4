"""A fault-injecting HTTP proxy in front of an S3 endpoint (the moto server), on 127.0.0.1.

    with s3_fault_proxy("http://127.0.0.1:5000", rate=0.2, seed=0) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.endpoint)   # about 1 request in 5 fails
        ...
        proxy.counters.faults, proxy.counters.requests

For a ``rate`` fraction of the requests (drawn from ``random.Random(seed)``), the proxy answers
``503 SlowDown`` (S3's XML error body), ``500 InternalError``, or resets the connection (an RST, no
answer), the kinds in turn; the other requests go to the upstream unchanged. A faulted request never
reaches the upstream, so nothing it would have changed has changed: a client that retries it sees
the same store as a fault-free run. One asyncio loop on a thread of its own, so that sync tests,
the harness and Ray workers on this machine can all use it; HTTP/1.1 keep-alive, ``Content-Length``
and chunked bodies, ``Expect: 100-continue`` (answered by the proxy itself, as the AWS C++ SDK that
pyarrow uses sends it on PUTs).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["FaultCounters", "FaultProxy", "s3_fault_proxy", "FAULT_KINDS"]

FAULT_KINDS = ("slowdown", "internal", "reset")
MAX_HEADER_BYTES = 64 * 1024

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>srgan-fault-{n}</RequestId></Error>"
)
_STATUS = {"slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
           "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again.")}


@dataclass
class FaultCounters:
    """What the proxy saw: every request, the faults it injected by kind, and those it forwarded."""

    requests: int = 0
    forwarded: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAULT_KINDS})

    @property
    def faults(self) -> int:
        return sum(self.by_kind.values())

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "forwarded": self.forwarded, "faults": self.faults, **self.by_kind}


class _Closed(Exception):
    """The peer closed the connection between requests."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str]]:
    """One HTTP/1.1 message's head -> (start line + headers as received, lower-cased headers)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from None
        raise
    except asyncio.LimitOverrunError:
        raise ValueError("header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return head, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, until_close: bool) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    body += line
                    if line == b"\r\n":
                        return bytes(body)
            body += await reader.readexactly(size + 2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read() if until_close else b""


def _drop_header(head: bytes, name: str) -> bytes:
    lines = head.split(b"\r\n")
    keep = [line for line in lines if not line.lower().startswith(name.encode() + b":")]
    return b"\r\n".join(keep)


class FaultProxy:
    """The proxy's state; :func:`s3_fault_proxy` runs it. ``rate`` in [0, 1]; ``kinds`` the faults drawn."""

    def __init__(self, upstream: str, *, rate: float, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if not kinds or set(kinds) - set(FAULT_KINDS):
            raise ValueError(f"kinds must be among {FAULT_KINDS}, got {kinds}")
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.upstream = (host, int(port or 80))
        self.rate, self.kinds = rate, tuple(kinds)
        self.counters = FaultCounters()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.endpoint = ""

    def _draw(self) -> str | None:
        """The fault for the next request (or None), from the seeded stream; counts the request."""
        with self._lock:
            self.counters.requests += 1
            if self._rng.random() >= self.rate:
                self.counters.forwarded += 1
                return None
            kind = self.kinds[self.counters.faults % len(self.kinds)]  # in turn: equal shares, each kind soon
            self.counters.by_kind[kind] += 1
            return kind

    def set_rate(self, rate: float) -> None:
        """Change the fault rate of the requests to come (0 makes it a plain proxy)."""
        with self._lock:
            self.rate = rate

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head, headers = await _read_head(reader)
                except _Closed:
                    return
                method = head.split(b" ", 1)[0].decode("latin-1").upper()
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                    head = _drop_header(head, "expect")
                body = await _read_body(reader, headers, until_close=False)
                fault = self._draw()
                if fault == "reset":
                    _reset(writer)
                    return
                if fault is not None:
                    writer.write(_error_response(fault, self.counters.faults, head_only=method == "HEAD"))
                    await writer.drain()
                    continue
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                up_reader, up_writer = upstream
                up_writer.write(head + body)
                await up_writer.drain()
                response, response_headers = await _read_head(up_reader)
                status = int(response.split(b" ", 2)[1])
                no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
                closes = response_headers.get("connection", "").lower() == "close"
                response_body = b"" if no_body else await _read_body(up_reader, response_headers, until_close=True)
                writer.write(response + response_body)
                await writer.drain()
                if closes or (not no_body and "content-length" not in response_headers
                              and "chunked" not in response_headers.get("transfer-encoding", "").lower()):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, OSError, asyncio.CancelledError):
            return  # a peer gone, or the proxy stopping (its connections are cancelled then)
        finally:
            for w in ([upstream[1]] if upstream else []) + [writer]:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - already reset
                    pass


def _error_response(kind: str, n: int, *, head_only: bool) -> bytes:
    """S3's error answer; for a HEAD, without the body (the client reads none: sending it would
    corrupt the next answer on the kept-alive connection)."""
    status, reason, code, message = _STATUS[kind]
    body = b"" if head_only else _ERROR_XML.format(code=code, message=message, n=n).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: srgan-fault-{n}\r\n\r\n").encode() + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends an RST, the client sees 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextmanager
def s3_fault_proxy(upstream: str, *, rate: float, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` on 127.0.0.1 (a free port) on a thread of its own; yields it (its
    ``endpoint`` URL and ``counters``). Stops the server and its connections on exit."""
    proxy = FaultProxy(upstream, rate=rate, seed=seed, kinds=kinds)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    async def serve() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=MAX_HEADER_BYTES)
        state["server"] = server
        proxy.endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=main, name="s3-fault-proxy", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the S3 fault proxy did not start")
    try:
        yield proxy
    finally:
        async def shutdown() -> None:
            state["server"].close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # collected: no 'exception never retrieved'

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
