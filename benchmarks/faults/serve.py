"""Serve-endpoint scenarios of the reliability harness: hostile load, overload, stopping, a killed replica.

Each starts the Serve app as users do, ``pipelines/serve.py`` as a subprocess (on the shared cluster
through Run.env()'s RAY_ADDRESS, or on a local cluster of its own for "serve-stop"), with a small
random generator checkpoint written in the scenario's directory, and drives it over real HTTP on
127.0.0.1. Bad requests are built as real clients send them, raw sockets included (slow senders,
clients that hang up mid-body).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.faults import Outcome, Run, Scenario, alive, process_tree, project_command, rss_mib, status_mib, wait_until
from benchmarks.faults.services import free_port  # noqa: F401 - also puts tests/ on sys.path

LIMIT = 20 * 1024 * 1024  # the default body limit
SERVE_START_S = 240  # a loaded 2-core machine can take minutes to start a replica


# ------------------------------------------------------------------------------------------ the app


def write_checkpoint(folder: Path) -> Path:
    """A small generator with random weights and real BN statistics (tests/conftest.py's helper)."""
    import torch

    saved = dict(os.environ)
    try:  # conftest sets the test session's Ray token path on import: keep the harness's own
        from conftest import randomise_bn_statistics
    finally:
        os.environ.clear()
        os.environ.update(saved)

    from srgan.core.checkpoint import save_generator
    from srgan.core.models import GeneratorConfig, build_generator

    torch.manual_seed(0)
    net = randomise_bn_statistics(build_generator(GeneratorConfig(num_blocks=2, num_features=16)))
    return save_generator(folder / "generator", net)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def stats(self, client: httpx.Client | None = None) -> dict:
        get = client.get if client else httpx.get
        return get(f"{self.url}/v1/models", timeout=60).json()["replica_stats"]


def start_server(run: Run, folder: Path, *args: str, local: bool = False, name: str = "serve") -> Server:
    """``pipelines/serve.py`` in its own process group (as a terminal runs it), healthy, on a free port."""
    checkpoint = folder / "generator"
    if not checkpoint.exists():
        write_checkpoint(folder)
    port = free_port()
    env = run.env()
    if local:  # a cluster of its own, started by serve.py (the terminal case)
        env.pop("RAY_ADDRESS", None)
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            project_command("serve.py", "--model", str(checkpoint), "--port", str(port), "--refresh-interval", "0", *args),
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"serve.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, SERVE_START_S, interval=0.5, what="serve.py healthy")
    except BaseException:
        stop_server(Server(proc, url, log))
        raise
    return Server(proc, url, log)


def stop_server(server: Server, signum: int = signal.SIGINT) -> None:
    """Ctrl-C to its group; SIGKILL to the group if it has not gone in 30 s (and Serve shut down)."""
    if server.proc.poll() is None:
        try:
            os.killpg(server.proc.pid, signum)
            server.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.proc.wait(10)


# ------------------------------------------------------------------------------------------ payloads


def png(width: int, height: int, seed: int = 0, *, smooth: bool = False) -> bytes:
    if smooth:  # compresses well: a large image in a small body
        y, x = np.mgrid[0:height, 0:width]
        arr = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256], -1).astype(np.uint8)
    else:
        arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image over a tiny data stream (a decompression bomb's shape)."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Hostile:
    """One kind of bad request: how it is sent, and the status it must get (None: no answer expected)."""

    name: str
    expect: int | None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    mode: str = "http"  # http | chunked | slow | stall | hangup | declared


def hostile_kinds() -> list[Hostile]:
    good = png(48, 48, seed=7)
    jpg = jpeg(64, 64, seed=8)
    return [
        Hostile("empty body", 400),
        Hostile("truncated PNG", 400, good[: len(good) // 2]),
        Hostile("truncated JPEG", 400, jpg[: len(jpg) // 3]),
        Hostile("random bytes", 415, random.Random(1).randbytes(5000)),
        Hostile("PNG decompression bomb", 413, bomb_png(60_000, 60_000)),
        Hostile("huge declared size", 413, mode="declared"),  # Content-Length: 10^12, no body follows
        Hostile("wrong content type", 400, good, (("Content-Type", "multipart/form-data; boundary=xyz"),)),
        Hostile("over-limit body, declared", 413, b"\0" * (LIMIT + 1)),
        Hostile("over-limit body, chunked", 413, mode="chunked"),
        Hostile("slow sender", 200, good, mode="slow"),  # slow but steady: served
        Hostile("stalled sender", 408, good, mode="stall"),  # half a body, then silence
        Hostile("disconnect mid-request", None, good, mode="hangup"),
    ]


# ------------------------------------------------------------------------------------------ raw HTTP


async def _raw(url: str, head: str, parts: list[bytes], gap_s: float = 0.0, hang_up: bool = False,
               timeout: float = 120) -> tuple[int | None, bytes, dict[str, str]]:
    """One request over a raw socket: ``head`` then each part (``gap_s`` apart); (status, body, headers),
    or (None, b"", {}) when we hang up without reading.

    A server may answer early (a 413 mid-upload) and close while we still send. Our next send then
    fails with a reset, but the answer is already in our receive buffer, and an HTTP client reads it
    (httpcore does). asyncio's streams drop that buffer once the transport has failed, so this works on
    the socket itself. (With streams, a run once counted such a 413 as "no answer".)
    """
    import socket

    loop = asyncio.get_running_loop()
    host, port = url.rsplit("/", 1)[-1].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, int(port)))
        try:
            await loop.sock_sendall(sock, head.encode("latin-1"))
            for part in parts:
                if gap_s:
                    await asyncio.sleep(gap_s)
                await loop.sock_sendall(sock, part)
        except (BrokenPipeError, ConnectionResetError):
            if hang_up:
                return None, b"", {}
        if hang_up:
            return None, b"", {}
        data = await asyncio.wait_for(_recv_all(loop, sock), timeout)
    finally:
        sock.close()
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, body, headers


async def _recv_all(loop: asyncio.AbstractEventLoop, sock) -> bytes:
    """Everything the server sends until it closes; what arrived before a reset counts."""
    data = b""
    while True:
        try:
            block = await loop.sock_recv(sock, 1 << 16)
        except ConnectionResetError:
            if data:
                return data
            raise
        if not block:
            return data
        data += block


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def _request_head(length: int | None, extra: tuple[tuple[str, str], ...] = (), chunked: bool = False) -> str:
    lines = ["POST /v1/upscale HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in extra]
    return "\r\n".join(lines) + "\r\n\r\n"


async def send_hostile(url: str, kind: Hostile, client: httpx.AsyncClient) -> tuple[int | None, bytes, dict[str, str]]:
    if kind.mode == "http":
        resp = await client.post("/v1/upscale", content=kind.body, headers=dict(kind.headers))
        return resp.status_code, resp.content, dict(resp.headers)
    if kind.mode == "declared":
        return await _raw(url, _request_head(10**12), [])
    if kind.mode == "chunked":
        block = b"\0" * (1 << 20)
        chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        return await _raw(url, _request_head(None, chunked=True), [chunk] * (LIMIT // len(block) + 2) + [b"0\r\n\r\n"])
    body = kind.body
    if kind.mode == "slow":  # the whole body in 8 pieces over ~1.6 s
        step = max(1, len(body) // 8)
        return await _raw(url, _request_head(len(body)), [body[i:i + step] for i in range(0, len(body), step)], gap_s=0.2)
    if kind.mode == "stall":  # half the body, then nothing (the server's idle timeout must answer)
        return await _raw(url, _request_head(len(body)), [body[: len(body) // 2]])
    if kind.mode == "hangup":
        return await _raw(url, _request_head(len(body)), [body[: len(body) // 2]], hang_up=True)
    raise ValueError(kind.mode)


def _is_json_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and set(parsed) == {"error"} and bool(parsed["error"])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ------------------------------------------------------------------------------------------ serve-hostile


def serve_hostile(run: Run) -> Outcome:
    total = 240 if run.quick else 2000
    out = Outcome("serve-hostile", ran=f"{total} requests, 16 concurrent clients, ~10% hostile (12 kinds)")
    folder = run.dir("serve-hostile")
    server = start_server(run, folder, "--num-cpus", "0.5", "--batch-wait-ms", "2", "--body-idle-timeout", "2")
    try:
        kinds = hostile_kinds()
        good = [png(48, 48, seed=i) for i in range(8)] + [jpeg(40, 32, seed=i) for i in range(4)]
        plan = ["good"] * total
        rng = random.Random(0)
        for i in rng.sample(range(total), max(len(kinds), total // 10)):
            plan[i] = "bad"
        bad_slots = [i for i, p in enumerate(plan) if p == "bad"]
        assignment = {slot: kinds[n % len(kinds)] for n, slot in enumerate(bad_slots)}  # every kind, evenly
        stats = server.stats()
        pid = stats["pid"]
        rss_before = rss_mib(pid)
        results = asyncio.run(_drive_hostile(server.url, plan, assignment, good))
        healthy_after = httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        stats_after = server.stats()
        rss_after = rss_mib(pid) if Path(f"/proc/{pid}").exists() else float("nan")
    finally:
        stop_server(server)
    good_results = [r for r in results if r[0] == "good"]
    bad_results = [r for r in results if r[0] != "good"]
    served = [r for r in good_results if r[1] == 200]
    latencies = [r[3] for r in served]
    wrong = [(r[0], r[1]) for r in bad_results if r[1] != assignment_expect(r[0], kinds)]
    not_json = [r[0] for r in bad_results if r[1] is not None and r[1] >= 400 and not r[2]]
    five = [(r[0], r[1]) for r in results if r[1] is not None and r[1] >= 500]
    by_kind: dict[str, list] = {}
    for r in bad_results:
        by_kind.setdefault(r[0], []).append(r[1])
    bound = 256.0  # MiB of growth over a run of small requests: allocator caches, not a leak
    out.figures.update({
        "requests": len(results), "good served": f"{len(served)}/{len(good_results)}",
        "good p50": f"{percentile(latencies, 50):.3f} s", "good p99": f"{percentile(latencies, 99):.3f} s",
        "hostile": len(bad_results), "hostile answered as expected": f"{len(bad_results) - len(wrong)}/{len(bad_results)}",
        "5xx": len(five), "replica RSS before/after": f"{rss_before:.0f}/{rss_after:.0f} MiB (bound +{bound:.0f})",
        "statuses by kind": "; ".join(f"{k}: {sorted(set(map(str, v)))}" for k, v in sorted(by_kind.items())),
    })
    out.check("every good request served", len(served) == len(good_results))
    out.check("every hostile kind sent", set(by_kind) == {k.name for k in kinds})
    out.check("every bad request got its status", not wrong)
    out.check("every 4xx has a JSON error body", not not_json)
    out.check("zero 5xx", not five)
    out.check("replica still healthy, same process", healthy_after and stats_after["pid"] == pid)
    out.check(f"replica RSS grew at most {bound:.0f} MiB", rss_after - rss_before <= bound)
    if wrong:
        out.figures["wrong statuses"] = str(wrong[:10])
    return out


def assignment_expect(name: str, kinds: list[Hostile]) -> int | None:
    return next(k.expect for k in kinds if k.name == name)


async def _drive_hostile(url: str, plan: list[str], assignment: dict[int, Hostile], good: list[bytes]) -> list[tuple]:
    """16 workers over the plan; each result: (kind name or "good", status, JSON error?, seconds)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(plan)):
        queue.put_nowait(i)
    results: list[tuple] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                started = time.perf_counter()
                if plan[i] == "good":
                    try:
                        resp = await client.post("/v1/upscale", content=good[i % len(good)])
                        results.append(("good", resp.status_code, _is_json_error(resp.content), time.perf_counter() - started))
                    except httpx.HTTPError as exc:
                        results.append(("good", None, False, repr(exc)))
                    continue
                kind = assignment[i]
                try:
                    status, body, _ = await send_hostile(url, kind, client)
                except (OSError, httpx.HTTPError, asyncio.TimeoutError):
                    status, body = None, b""  # the server closed on us (e.g. after a 413 mid-upload)
                ok_json = _is_json_error(body) if status and status >= 400 else True
                results.append((kind.name, status, ok_json, time.perf_counter() - started))

        await asyncio.gather(*(worker() for _ in range(16)))
    return results


# ------------------------------------------------------------------------------------------ serve-overload


def serve_overload(run: Run) -> Outcome:
    out = Outcome("serve-overload")
    folder = run.dir("serve-overload")
    # A small budget so that the largest allowed input (1000x1000: 16 MP of output) takes seconds, and the
    # deadline off for the memory part: the budget must hold whatever the deadline.
    server = start_server(run, folder, "--num-cpus", "1", "--batch-wait-ms", "2", "--memory-budget-mpx", "16",
                          "--max-ongoing-requests", "8", "--max-queued-requests", "8")
    try:
        body = png(128, 128, seed=3)
        # Saturated throughput: 16 closed-loop clients.
        sat = asyncio.run(_closed_loop(server.url, body, clients=16, requests=160))
        rate = sat["ok"] / sat["seconds"]
        # About 4x that, open loop, for 15 s.
        offered = asyncio.run(_open_loop(server.url, body, rate=4 * rate, seconds=15))
        stats = server.stats()
        pid = stats["pid"]
        hwm_before = status_mib(pid, "VmHWM")
        big = asyncio.run(_burst(server.url, png(1000, 1000, smooth=True), 16))
        huge = asyncio.run(_burst(server.url, png(4000, 4000, smooth=True), 16))  # 16 MP in: over the budget
        stats_after = server.stats()
        replica_alive = Path(f"/proc/{pid}").exists() and stats_after["pid"] == pid
        hwm_after = status_mib(pid, "VmHWM") if replica_alive else float("nan")
    finally:
        stop_server(server)
    ok = [r for r in offered if r[0] == 200]
    refused = [r for r in offered if r[0] == 503]
    other = [r for r in offered if r[0] not in (200, 503)]
    bound = 16e6 * 48 / 2**20 + 8 * 1 + 400  # budget x 48 B + bodies + fixed (docs/serving.md)
    out.ran = f"saturation {rate:.1f} req/s (16 clients); offered {4 * rate:.1f} req/s for 15 s; 16 x 1000x1000 and 16 x 4000x4000 at once"
    out.figures.update({
        "saturated throughput": f"{rate:.1f} req/s", "offered": len(offered), "accepted": len(ok), "refused 503": len(refused),
        "accepted p50/p99": f"{percentile([r[1] for r in ok], 50):.2f}/{percentile([r[1] for r in ok], 99):.2f} s",
        "refused p99": f"{percentile([r[1] for r in refused], 99):.3f} s",
        "refused with Retry-After": f"{sum(r[2] for r in refused)}/{len(refused)}",
        "refused with JSON (replica) / text (Serve's proxy)": f"{sum(r[3] for r in refused)}/{len(refused) - sum(r[3] for r in refused)}",
        "other statuses": sorted({r[0] for r in other}),
        "16 x 16 MP-output": f"{sorted(set(r[0] for r in big))}, peak {stats_after['peak_output_mpx']:.1f} MP held",
        "16 x 16 MP input": sorted(set(r[0] for r in huge)),
        "replica peak RSS before/after": f"{hwm_before:.0f}/{hwm_after:.0f} MiB (bound +{bound:.0f})",
    })
    out.check("excess refused with 503", len(refused) > 0)
    out.check("every 503 has Retry-After", all(r[2] for r in refused))
    out.check("refusals are fast (p99 < 2 s)", percentile([r[1] for r in refused], 99) < 2.0)
    out.check("no other failures", not other)
    out.check("accepted p99 bounded (< 30 s)", percentile([r[1] for r in ok], 99) < 30)
    out.check("largest allowed inputs: served or 503, never 5xx otherwise", {r[0] for r in big} <= {200, 503})
    # The replica refuses what it sees with 413; a burst that finds Serve's proxy queue full is refused
    # there first, with 503 + Retry-After (text), before any replica reads the body (docs/serving.md).
    proxy_refused = [r for r in huge if r[0] == 503 and r[2] and not r[3]]
    out.figures["16 x 16 MP input: 413 / 503 at Serve's proxy"] = f"{sum(r[0] == 413 for r in huge)}/{len(proxy_refused)}"
    out.check("16 MP inputs: 413 (over the budget), or 503 + Retry-After at a full proxy queue",
              any(r[0] == 413 for r in huge) and all(r[0] == 413 or r in proxy_refused for r in huge))
    out.check("memory budget held", stats_after["peak_output_mpx"] <= 16.0)
    out.check("replica not killed", replica_alive)
    out.check("replica peak RSS within the bound", hwm_after - hwm_before <= bound)
    return out


async def _closed_loop(url: str, body: bytes, *, clients: int, requests: int) -> dict:
    count = {"ok": 0, "n": 0}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def worker() -> None:
            while count["n"] < requests:
                count["n"] += 1
                resp = await client.post("/v1/upscale", content=body)
                count["ok"] += resp.status_code == 200

        await asyncio.gather(*(worker() for _ in range(clients)))
    return {**count, "seconds": time.perf_counter() - started}


async def _open_loop(url: str, body: bytes, *, rate: float, seconds: float) -> list[tuple]:
    """Requests started at ``rate`` per second whatever the answers: [(status, seconds, retry-after?, JSON?)]."""
    results: list[tuple] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one() -> None:
            started = time.perf_counter()
            try:
                resp = await client.post("/v1/upscale", content=body)
            except httpx.HTTPError:
                results.append((None, time.perf_counter() - started, False, False))
                return
            results.append((resp.status_code, time.perf_counter() - started, "retry-after" in resp.headers,
                            _is_json_error(resp.content)))

        tasks = []
        start = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return results


async def _burst(url: str, body: bytes, n: int) -> list[tuple]:
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        async def one() -> tuple:
            started = time.perf_counter()
            resp = await client.post("/v1/upscale", content=body)
            is_json = resp.headers.get("content-type", "").startswith("application/json")
            return resp.status_code, time.perf_counter() - started, "retry-after" in resp.headers, is_json

        return list(await asyncio.gather(*(one() for _ in range(n))))


# ------------------------------------------------------------------------------------------ serve-stop


def serve_stop(run: Run) -> Outcome:
    out = Outcome("serve-stop", ran="pipelines/serve.py on a local cluster of its own; 4 stops")
    folder = run.dir("serve-stop")
    for signame, to_group in (("SIGINT", False), ("SIGINT", True), ("SIGTERM", False), ("SIGTERM", True)):
        label = f"{signame} to the {'group' if to_group else 'process'}"
        server = start_server(run, folder, "--num-cpus", "0.5", local=True, name=f"stop-{signame}-{int(to_group)}")
        try:
            # Some load in flight while it stops (the case that once spun at 100% CPU).
            load = subprocess.Popen([sys.executable, "-c", _LOAD_SNIPPET, server.url], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            tree = [p for p in process_tree(server.proc.pid)]
            signum = getattr(signal, signame)
            started = time.monotonic()
            if to_group:
                os.killpg(server.proc.pid, signum)
            else:
                server.proc.send_signal(signum)
            try:
                server.proc.wait(60)
                wait_until(lambda: not [p for p in tree if alive(p)], 60, interval=0.05, what="every process gone")
                seconds = time.monotonic() - started
            except (subprocess.TimeoutExpired, TimeoutError):
                seconds = float("inf")
            left = [p for p in tree if alive(p)]
            load.kill()
            load.wait()
        finally:
            if server.proc.poll() is None:
                stop_server(server, signal.SIGKILL)
            for pid in [p for p in tree if alive(p)]:
                os.kill(pid, signal.SIGKILL)  # the leftovers of the processes it started
        out.figures[label] = f"{seconds:.1f} s ({len(tree)} processes, exit {server.proc.returncode})"
        out.check(f"{label}: every process gone in < 10 s", seconds < 10 and not left)
    return out


_LOAD_SNIPPET = """
import sys, httpx, io
from PIL import Image
buf = io.BytesIO(); Image.new("RGB", (256, 256), (9, 99, 199)).save(buf, "PNG")
with httpx.Client(base_url=sys.argv[1], timeout=30) as c:
    while True:
        try:
            c.post("/v1/upscale", content=buf.getvalue())
        except Exception:
            pass
"""


# ------------------------------------------------------------------------------------------ serve-replica-kill


def serve_replica_kill(run: Run) -> Outcome:
    out = Outcome("serve-replica-kill", ran="2 replicas, 16 closed-loop clients; SIGKILL one replica's pid mid-run")
    folder = run.dir("serve-replica-kill")
    server = start_server(run, folder, "--replicas", "2", "--num-cpus", "0.5", "--batch-wait-ms", "2")
    try:
        body = png(64, 64, seed=5)
        first = httpx.post(f"{server.url}/v1/upscale", content=body, timeout=60)
        version = first.headers["x-model-version"]
        pids = _replica_pids(server)
        victim = sorted(pids)[0]
        result = asyncio.run(_kill_under_load(server, body, victim))
        pids_after = _replica_pids(server, want=2)
        after = httpx.post(f"{server.url}/v1/upscale", content=body, timeout=60)
    finally:
        stop_server(server)
    failed = [r for r in result["results"] if r[1] != 200]
    out.figures.update({
        "requests": len(result["results"]), "failed": len(failed), "in flight at the kill": result["in_flight"],
        "failed statuses": sorted({str(r[1]) for r in failed}),
        "first success after the kill": f"{result['first_ok_s']:.2f} s",
        "replacement serving": f"{result['replaced_s']:.1f} s" if result["replaced_s"] is not None else "not seen",
        "replicas before/after": f"{sorted(pids)} -> {sorted(pids_after)}",
    })
    out.check("failed at most the requests in flight", len(failed) <= result["in_flight"])
    out.check("a replacement replica serves", result["replaced_s"] is not None and victim not in pids_after)
    out.check("the replacement serves the same model version", after.headers.get("x-model-version") == version
              and result["versions"] == {version})
    return out


def _replica_pids(server: Server, want: int = 2, timeout: float = 180) -> set[int]:
    """The replicas' pids, from /v1/models answers (each replica reports its own)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{server.url}/v1/models", timeout=10)
            if resp.status_code == 200:
                pid = resp.json()["replica_stats"]["pid"]
                if alive(pid):
                    seen.add(pid)
        except httpx.HTTPError:
            pass
        seen = {p for p in seen if alive(p)}
        if len(seen) >= want:
            return seen
        time.sleep(0.1)
    return seen


async def _kill_under_load(server: Server, body: bytes, victim: int) -> dict:
    results: list[tuple] = []
    versions: set[str] = set()
    state = {"in_flight": 0, "killed_at": None, "first_ok_s": float("nan"), "replaced_s": None}
    stop_at = time.monotonic() + 40
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        async def worker() -> None:
            while time.monotonic() < stop_at:
                state["in_flight"] += 1
                started = time.monotonic()
                try:
                    resp = await client.post("/v1/upscale", content=body)
                    status = resp.status_code
                    if status == 200:
                        versions.add(resp.headers["x-model-version"])
                except httpx.HTTPError:
                    status = None
                state["in_flight"] -= 1
                results.append((started, status))
                killed = state["killed_at"]
                if status == 200 and killed is not None and started > killed and state["first_ok_s"] != state["first_ok_s"]:
                    state["first_ok_s"] = time.monotonic() - killed

        async def killer() -> None:
            await asyncio.sleep(8)
            in_flight = state["in_flight"]
            os.kill(victim, signal.SIGKILL)
            state["killed_at"] = time.monotonic()
            state["in_flight_at_kill"] = in_flight
            while time.monotonic() < stop_at:  # a new replica: a pid answering that is neither of the old ones
                try:
                    resp = await client.get("/v1/models", timeout=10)
                    pid = resp.json()["replica_stats"]["pid"] if resp.status_code == 200 else None
                except (httpx.HTTPError, ValueError, KeyError):
                    pid = None
                if pid is not None and pid != victim and pid not in known:
                    state["replaced_s"] = time.monotonic() - state["killed_at"]
                    return
                await asyncio.sleep(0.2)

        known = _replica_pids_sync(server)
        await asyncio.gather(killer(), *(worker() for _ in range(16)))
    return {"results": results, "in_flight": state.get("in_flight_at_kill", 16), "first_ok_s": state["first_ok_s"],
            "replaced_s": state["replaced_s"], "versions": versions}


def _replica_pids_sync(server: Server) -> set[int]:
    return _replica_pids(server, want=2, timeout=60)


SCENARIOS = {
    "serve-hostile": Scenario(run=serve_hostile, quick=True, what="16 clients, ~10% hostile requests: every bad one its 4xx + JSON, zero 5xx, RSS bounded"),
    "serve-overload": Scenario(run=serve_overload, quick=False, what="~4x saturated throughput: fast 503 + Retry-After; 16 largest inputs at once"),
    "serve-stop": Scenario(run=serve_stop, quick=False, what="SIGINT/SIGTERM to serve.py and to its group: every process gone in < 10 s"),
    "serve-replica-kill": Scenario(run=serve_replica_kill, quick=False, what="SIGKILL a replica under load: failures, recovery time, same version"),
}
