"""The online endpoint (a Ray edge): a Ray Serve deployment with a FastAPI ingress around the Upscaler.

    GET  /               the web page (package data in ``static/``): upload, before/after comparison, download
    POST /v1/upscale     raw image bytes (PNG, JPEG, WebP, BMP) or multipart/form-data with a ``file`` field
                         -> the upscaled image; ``?format=png|jpeg|webp`` (default: the input's),
                         ``?quality=1..100`` for the lossy formats, ``?model=REF`` (or the
                         ``serve_multiplexed_model_id`` header) for a model of the allow-list.
                         Headers X-Input-Size, X-Output-Size (WIDTHxHEIGHT), X-Model-Name,
                         X-Model-Version, X-Batch-Size.
    GET  /healthz        200 once a model is loaded
    GET  /v1/models      every model this endpoint serves (the default first), with scale and resolved version
    GET  /docs           the OpenAPI page, its Swagger UI files served from fastapi-offline's package (no CDN)

Authentication (optional, off by default): with ``SRGAN_API_TOKEN`` set in the replicas' environment,
every ``/v1/*`` route needs ``Authorization: Bearer <token>`` (else 401 with JSON and
``WWW-Authenticate: Bearer``), compared in constant time and never logged. ``/healthz``, the page and
its static files, and ``/docs`` stay open; the page asks for the token when the API answers 401.

Inside a replica:
- The generator is loaded once (:class:`~srgan.core.inference.Upscaler`, the class the bulk job uses too).
- Small inputs (both sides <= ``batch_max_side``) wait up to ``batch_wait_timeout_s`` in a
  ``@serve.batch`` queue; each batch is split by model and image size and every group is one forward
  pass, so only same-size images for the same model share a pass. Larger inputs skip the queue and go through the Upscaler's
  tiling on their own. One forward pass runs at a time per replica: concurrent passes would only
  contend for the same cores or GPU.
- Decoding, inference and encoding run in worker threads so the event loop keeps accepting requests
  (which then join the next batch).
- Time and memory (docs/serving.md has the arithmetic): each request gets a compute deadline
  (``deadline_s``; default by device). From the image header the replica knows the output size before
  decoding: more output pixels than the replica's ``memory_budget_mpx`` is a 413; an estimate (output
  pixels / the replica's measured rate, seeded by ``rate_mpx_s``) over the deadline is a 413 with the
  estimate; a queue ahead that would push it past the deadline is a 503 with ``Retry-After``. Decoding,
  the forward passes and encoding run while holding the request's output pixels in a weighted FIFO
  semaphore (:class:`PixelBudget`), so the budget bounds what a replica holds whatever the deadline.
  Work still running at the deadline stops between tiles with a 504.
- Overload: Serve's proxy queues at most ``max_queued_requests`` per deployment and refuses the rest
  at once with 503 and ``Retry-After`` (``backpressure_config``); the replica refuses what its queue cannot
  finish in time (above) with 503, ``Retry-After`` and JSON.
- Limits: the body is capped while it streams (Serve's proxy has no request-size limit), then
  :func:`~srgan.core.images.decode_image` checks the pixel count from the header. A client's mistake
  gets a 4xx with ``{"error": "<one line>"}``, never a 500.
- Several models: the default (``user_config.model``) is always loaded; the others of
  ``allowed_models`` load on first use through Serve's model multiplexing (``@serve.multiplexed``),
  an LRU of at most ``max_models_per_replica`` per replica. Serve's proxy sends a request with the
  ``serve_multiplexed_model_id`` header to a replica that already holds that model; ``?model=`` is
  answered by the replica the request reached (no extra hop: the default path stays as fast).
- Model updates without downtime: the model reference lives in the deployment's ``user_config``.
  Changing it (``serve deploy`` with a new ``user_config.model``) calls :meth:`UpscaleService.reconfigure`
  on the running replicas; a registry alias (``models:/NAME@ALIAS``) is also polled every
  ``refresh_interval_s`` seconds. Either way the new weights load in a background thread while the
  old ones keep serving, then the replica swaps them in one assignment.

Build the application with :func:`build_app` (the import path ``srgan.distributed.serving:build_app`` of
``infra/serve_config.yaml``); :func:`run_server` is what ``pipelines/serve.py`` calls.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures of the Serve
# ingress class at run time, and postponed (string) annotations there break its OpenAPI schema.
import asyncio
import hashlib
import hmac
import html
import io
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from ray import serve
from pydantic import Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from starlette.exceptions import HTTPException as StarletteHTTPException

from srgan.errors import DeadlineExceededError, UserError
from srgan.config import OPTIONS, Float, Int, NonNegativeFloat, NonNegativeInt, PositiveInt, error_line, must
from srgan.core.checkpoint import load_generator
from srgan.core.images import DecodedImage, ImageError, ImageLimits, decode_image, encode_image
from srgan.core.inference import Upscaler, UpscalerOptions, weights_digest
from srgan.tracking.refs import DEFAULT_MODEL, RUNTIMES, ModelSource, fetched_model, load_upscaler, resolve_model

__all__ = ["ServeOptions", "ModelConfig", "UpscaleService", "build_app", "application", "run_server", "APP_NAME", "DEPLOYMENT_NAME"]

log = logging.getLogger(__name__)

APP_NAME = "srgan"
DEPLOYMENT_NAME = "UpscaleService"
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Room for the multipart envelope (boundaries, part headers) around a file of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024
# ImageError.kind -> HTTP status.
STATUS_FOR_KIND = {"too_large": 413, "unsupported": 415, "corrupt": 400}
DRAIN_POLL_S = 0.2  # how often a stopping replica checks that its in-flight requests have finished
# Serve's HTTP proxy reads this header (also spelled with hyphens) and routes the request to a replica
# that already holds that model; the replica reads it back with serve.get_multiplexed_model_id().
MODEL_HEADER = "serve_multiplexed_model_id"
MAX_MODEL_REF = 1000  # characters of a ?model= value
MAX_ALLOWED_MODELS = 64
STATIC = "static"  # the web page's folder, package data of srgan.distributed
TOKEN_ENV = "SRGAN_API_TOKEN"  # the bearer token the replicas require on /v1/* (unset or empty: no auth)
TOKEN_DIGEST_ENV = "SRGAN_API_TOKEN_SHA256"  # its SHA-256 (hex), the form pipelines/serve.py hands the replicas
PROTECTED_PREFIX = "/v1/"
# Device defaults (docs/serving.md): the compute deadline per request, and the rate (output megapixels
# per second) the first estimates use before the replica has measured its own.
DEFAULT_DEADLINE_S = {"cpu": 60.0, "cuda": 20.0}
DEFAULT_RATE_MPX_S = {"cpu": 0.4, "cuda": 8.0}
BYTES_PER_OUTPUT_PIXEL = 48  # the peak a request holds per output pixel (docs/serving.md): the budget's unit cost


# ------------------------------------------------------------------------------------------ options


ModelRef = Annotated[str, must("a checkpoint directory/URI or models:/NAME@ALIAS", bool)]
AllowedModels = Annotated[tuple[ModelRef, ...], Field(max_length=MAX_ALLOWED_MODELS)]


@pydantic_dataclass(frozen=True, config=OPTIONS)
class ModelConfig:
    """The part of the configuration that can change on live replicas (the deployment's ``user_config``)."""

    model: ModelRef = DEFAULT_MODEL
    tracking_uri: str | None = None
    refresh_interval_s: NonNegativeFloat = 30.0  # how often a registry alias is re-resolved; 0 = never

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ModelConfig":
        return _from_dict(cls, values, "user_config key")


@pydantic_dataclass(frozen=True, config=OPTIONS)
class ServeOptions:
    """Everything :func:`build_app` takes (its ``args``), validated up front.

    ``model``/``tracking_uri``/``refresh_interval_s`` become the deployment's ``user_config``; limits,
    batching and inference settings go to each replica; the rest are Serve deployment options.
    """

    # model (user_config: updatable without restarting replicas)
    model: ModelRef = DEFAULT_MODEL
    tracking_uri: str | None = None
    refresh_interval_s: NonNegativeFloat = 30.0
    # more models, chosen per request with ?model= or the serve_multiplexed_model_id header
    allowed_models: AllowedModels = ()  # references as --model takes them; the default model is always allowed
    max_models_per_replica: PositiveInt = 3  # loaded generators besides the default, per replica (an LRU)
    # limits
    max_bytes: PositiveInt = ImageLimits.max_bytes
    max_pixels: PositiveInt = ImageLimits.max_pixels
    # batching and inference
    max_batch_size: PositiveInt = 8  # requests per @serve.batch call; 1 disables batching
    batch_wait_timeout_s: NonNegativeFloat = 0.01
    batch_max_side: PositiveInt = 256  # inputs with both sides <= this are batched; larger ones are tiled alone
    tile_size: Int = 256
    device: str = "auto"
    precision: str = "fp32"
    runtime: Annotated[str, must("torch or onnxruntime", lambda r: r in RUNTIMES)] = "torch"  # onnxruntime: CPU replicas (docs/export.md)
    torch_threads: NonNegativeInt = 0  # intra-op threads per replica; 0 = Ray's default (its num_cpus, at least 1)
    quality: Annotated[Int, Field(ge=1, le=100)] = 90  # lossy output quality when the request gives none
    # time and memory per request (docs/serving.md)
    deadline_s: NonNegativeFloat | None = None  # compute deadline per request; None: by device (CPU 60, GPU 20); 0: none
    rate_mpx_s: Annotated[Float, Field(gt=0)] | None = None  # seed of the measured rate; None: by device (CPU 0.4, GPU 8)
    memory_budget_mpx: Annotated[Float, Field(gt=0)] = 64.0  # output megapixels one replica holds at once (x48 bytes)
    # slow clients: a stalled upload is a 408 instead of a replica slot held until the client hangs up
    body_idle_timeout_s: NonNegativeFloat = 15.0  # no body bytes for this long; 0: no limit
    body_timeout_s: NonNegativeFloat = 120.0  # the whole body (20 MB at ~1.4 Mbit/s); 0: no limit
    # overload
    max_queued_requests: Annotated[Int, Field(ge=-1)] = 64  # per caller (proxy), beyond max_ongoing_requests; -1: no limit
    retry_after_s: PositiveInt = 2  # the Retry-After of a 503 for overload
    # deployment
    num_replicas: PositiveInt = 1
    min_replicas: Int | None = None  # set min/max replicas to autoscale instead of a fixed count
    max_replicas: Int | None = None
    target_ongoing_requests: Annotated[Float, Field(gt=0)] = 2.0
    max_ongoing_requests: PositiveInt = 32
    num_cpus: NonNegativeFloat = 1.0
    num_gpus: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _check(self) -> "ServeOptions":
        if self.replica_range is not None:
            low, high = self.replica_range
            if self.num_replicas != 1:
                raise ValueError("give either num_replicas or min_replicas/max_replicas (autoscaling), not both")
            if low < 0 or high < 1 or low > high:
                raise ValueError(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {low} and {high}")
        self.upscaler_options()  # the core's own checks (device, precision, tile_size)
        if self.runtime == "onnxruntime" and (self.num_gpus > 0 or self.device not in ("auto", "cpu")):
            raise ValueError("the onnxruntime runtime runs on the CPU: drop --gpu (num_gpus, device), or use --runtime torch")
        return self

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "ServeOptions":
        """From the application's ``args`` (the YAML ``args:`` block or the CLI); unknown keys are refused."""
        return _from_dict(cls, args, "args key")

    @property
    def replica_range(self) -> tuple[int, int] | None:
        """(min, max) replicas when autoscaling (either bound given; min defaults to 1), else None."""
        if self.min_replicas is None and self.max_replicas is None:
            return None
        low = 1 if self.min_replicas is None else self.min_replicas
        high = max(1, low) if self.max_replicas is None else self.max_replicas
        return low, high

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(self.model, self.tracking_uri, self.refresh_interval_s)

    def upscaler_options(self) -> UpscalerOptions:
        return UpscalerOptions(device=self.device, precision=self.precision, tile_size=self.tile_size, max_batch=self.max_batch_size)

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            # Serve's proxy refuses beyond this at once: 503 with Retry-After (its own text body, not JSON).
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": float(self.retry_after_s)},
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "user_config": asdict(self.model_config),
            # A stopping replica sleeps this long before it first counts its in-flight requests, then
            # again between counts (Serve's default 2 s): every stop, idle or not, waited 2 s for nothing.
            # In-flight requests still finish, within Serve's graceful_shutdown_timeout_s (20 s).
            "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
        }
        if self.replica_range is not None:
            low, high = self.replica_range
            opts["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": self.target_ongoing_requests}
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


def _from_dict(cls, values: dict[str, Any] | None, unknown: str):
    """``cls(**values)`` with pydantic's errors as a one-line ValueError (what Serve shows for ``args``)."""
    try:
        return cls(**(values or {}))
    except ValidationError as exc:
        raise ValueError(error_line(exc, cls, unknown=unknown)) from None


# ------------------------------------------------------------------------------------------ errors


class ClientError(Exception):
    """A client's mistake (or a refusal it can retry): answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _error(status: int, message: str, *, retry_after: int | None = None) -> JSONResponse:
    headers = None if retry_after is None else {"Retry-After": str(max(1, int(retry_after)))}
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


# FastAPIOffline: FastAPI whose /docs loads Swagger UI's JavaScript and CSS from the fastapi-offline
# package (under /static-offline-docs) instead of a CDN, so the docs work offline and behind firewalls.
app = FastAPIOffline(
    title="srgan-ray upscaler",
    description=(
        "SRResNet/SRGAN x4 super-resolution (Ledig et al. 2017) served by Ray Serve.\n\n"
        "**Web page:** open [`/`](./) in a browser to upscale an image and compare it with its input.\n\n"
        "**Models:** `GET /v1/models` lists the models this endpoint serves; choose one per request with "
        f"`?model=REF` or the `{MODEL_HEADER}` header (which Serve routes to a replica that holds it)."
    ),
    version="1",
    redoc_url=None,
)
app.mount(f"/{STATIC}", StaticFiles(packages=[("srgan.distributed", STATIC)]), name=STATIC)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _api_token_digest() -> str:
    """The SHA-256 of the token this replica requires ("" when none), from its environment, read per request.

    ``SRGAN_API_TOKEN`` is the node's (a Kubernetes Secret); ``SRGAN_API_TOKEN_SHA256`` is what
    ``pipelines/serve.py`` passes in the runtime_env: Ray's runtime-env agent writes every runtime_env,
    env_vars included, into runtime_env_agent.log, so only a digest of the token may travel that way.
    """
    token = os.environ.get(TOKEN_ENV, "")
    return _token_digest(token) if token else os.environ.get(TOKEN_DIGEST_ENV, "").strip().lower()


def token_matches(header: str | None, digest: str) -> bool:
    """``Authorization: Bearer <token>`` whose SHA-256 is ``digest``, compared in constant time
    (hmac.compare_digest: no early exit on the first wrong byte)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(_token_digest(given.strip()), digest)


class BearerAuth:
    """Pure ASGI middleware: ``/v1/*`` needs the bearer token when one is set. It answers before the body
    is read, so an unauthenticated client cannot make the replica buffer an upload."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        token = _api_token_digest()
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if not token or scope["type"] != "http" or not path.startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", ()))
        if token_matches(headers.get("authorization"), token):
            return await self.app(scope, receive, send)
        message = ("this endpoint needs a bearer token: send 'Authorization: Bearer <token>' "
                   f"(the {TOKEN_ENV} the server was started with)")
        response = JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="srgan"'})
        await response(scope, receive, send)


app.add_middleware(BearerAuth)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    return _error(400, f"bad parameter {where}: {first.get('msg', 'invalid value')}")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, exc.detail)


@app.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """Our own fault (client mistakes are answered before this): JSON too, and logged with its traceback."""
    log.error("error serving %s", request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); the server keeps serving")


# ------------------------------------------------------------------------------------------ request body


async def _read_capped(request: Request, limit: int, *, idle_timeout: float | None = None,
                       total_timeout: float | None = None) -> bytes:
    """The request body, refusing more than ``limit`` bytes: by Content-Length before reading, then while
    streaming. A client that sends nothing for ``idle_timeout`` seconds, or has not finished after
    ``total_timeout``, gets a 408: a stalled upload would otherwise hold a replica slot until it hangs up."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ClientError(413, f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    end = None if total_timeout is None else time.monotonic() + total_timeout
    stream = request.stream().__aiter__()
    while True:
        wait = idle_timeout
        if end is not None:
            wait = max(0.0, end - time.monotonic()) if wait is None else min(wait, max(0.0, end - time.monotonic()))
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ClientError(408, f"the request body stalled: {size} bytes arrived, then nothing for "
                                   f"{wait:.0f} s; send the whole body promptly") from None
        size += len(chunk)
        if size > limit:  # chunked uploads carry no Content-Length: stop reading here
            raise ClientError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The ``file`` field of a multipart/form-data body that has already been read (and capped)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive=replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # starlette's MultiPartException, malformed boundaries, ...
        raise ClientError(400, f"bad multipart/form-data body: {exc}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ClientError(400, "multipart/form-data body has no 'file' field holding the image")
    return await upload.read()


async def read_image_bytes(request: Request, limits: ImageLimits, *, idle_timeout: float | None = None,
                           total_timeout: float | None = None) -> bytes:
    """Raw image bytes from the body, or from the ``file`` field of a multipart/form-data body."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    body = await _read_capped(request, limits.max_bytes + (MULTIPART_OVERHEAD if multipart else 0),
                              idle_timeout=idle_timeout, total_timeout=total_timeout)
    data = await _multipart_file(request, body) if multipart else body
    if not data:
        raise ClientError(400, "empty request body: send the image bytes, or multipart/form-data with a 'file' field")
    return data


def _check_params(fmt: str | None, quality: int | None) -> str | None:
    """Validate the query before the body is read; returns the output format asked for, if any."""
    if quality is not None and not 1 <= quality <= 100:
        raise ClientError(400, f"quality must be in 1..100, got {quality}")
    if fmt is None:
        return None
    if fmt.lower() not in OUTPUT_FORMATS:
        raise ClientError(400, f"format must be png, jpeg or webp, got {fmt!r}")
    return OUTPUT_FORMATS[fmt.lower()]


def _size(image: DecodedImage) -> str:
    width, height = image.size
    return f"{width}x{height}"


# ------------------------------------------------------------------------------------------ the web page


def page_html(root_path: str) -> str:
    """The web page (``static/index.html``), its links made relative to where the application is mounted."""
    text = (resources.files("srgan.distributed") / STATIC / "index.html").read_text(encoding="utf-8")
    return text.replace("__BASE_HREF__", html.escape(root_path.rstrip("/") + "/", quote=True))


# What the page may load: only its own origin (and the images it makes itself, as blob: URLs).
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'"


# ------------------------------------------------------------------------------------------ deployment


class PixelBudget:
    """A weighted FIFO semaphore on output pixels: what one replica may hold at once (docs/serving.md).

    ``hold(n)`` waits until ``n`` more pixels fit, in arrival order (a large request is never starved
    by a stream of small ones), or until its ``timeout``. One event loop (the replica's), no threads.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0  # pixels of the requests running now
        self.peak = 0  # the most ever held at once (a figure for the harness)
        self._waiting: list[tuple[int, asyncio.Future]] = []

    @property
    def pending(self) -> int:
        """Pixels held plus pixels waiting: the work ahead of a new request."""
        return self.held + sum(n for n, _ in self._waiting)

    def _wake(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.capacity:
            n, future = self._waiting.pop(0)
            if not future.done():
                self.held += n
                self.peak = max(self.peak, self.held)
                future.set_result(None)

    async def acquire(self, n: int, timeout: float | None = None) -> None:
        if n > self.capacity:
            raise ValueError(f"{n} pixels can never fit a budget of {self.capacity}")
        if not self._waiting and self.held + n <= self.capacity:
            self.held += n
            self.peak = max(self.peak, self.held)
            return
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except BaseException:  # timed out, or the client went away (cancelled): give back or leave the queue
            if future.done() and not future.cancelled():
                self.release(n)
            else:
                future.cancel()
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._wake()  # a smaller request behind this one may fit now
            raise

    def release(self, n: int) -> None:
        self.held -= n
        self._wake()


class RateMeter:
    """Output pixels per second of this replica's forward passes, weighted by pixels (large requests
    dominate, as they should for the estimates that matter), seeded with ``seed`` as one second's worth."""

    DECAY = 0.9  # per measurement: the estimate follows a slower or faster device within ~10 requests

    def __init__(self, seed_mpx_s: float) -> None:
        self.pixels, self.seconds = seed_mpx_s * 1e6, 1.0

    @property
    def mpx_s(self) -> float:
        return self.pixels / self.seconds / 1e6

    def add(self, pixels: int, seconds: float) -> None:
        if pixels > 0 and seconds > 0:
            self.pixels = self.pixels * self.DECAY + pixels
            self.seconds = self.seconds * self.DECAY + seconds

    def estimate_s(self, pixels: int) -> float:
        return pixels / 1e6 / self.mpx_s


def _memory_mib() -> tuple[float, float]:
    """(resident, peak resident) MiB of this process, from /proc (0 where there is none)."""
    values = {}
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return round(values.get("VmRSS", 0.0), 1), round(values.get("VmHWM", 0.0), 1)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone (nothing decoded); None when PIL cannot tell (then
    decode_image gives the client its precise error)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image reports it properly
        return None


@dataclass
class _Stats:
    """Per-replica counters (shown by /v1/models): how much batching actually happens, and model churn."""

    requests: int = 0
    batches: int = 0
    batched_images: int = 0
    largest_batch: int = 0
    tiled_alone: int = 0
    model_loads: int = 0  # the default model's loads and swaps, and every load into the LRU
    model_evictions: int = 0  # models the LRU unloaded to make room
    refused_too_slow: int = 0  # 413: cannot finish within the deadline even alone
    refused_over_budget: int = 0  # 413: more output pixels than the replica's memory budget
    refused_busy: int = 0  # 503: the queue ahead would push it past the deadline
    deadline_stopped: int = 0  # 504: stopped between tiles at the deadline
    peak_output_mpx: float = 0.0  # the most output megapixels held at once
    rate_mpx_s: float = 0.0  # the measured rate the estimates use
    rss_mib: float = 0.0  # this replica's resident memory now, and its peak since it started
    peak_rss_mib: float = 0.0
    pid: int = field(default_factory=os.getpid)  # the replica's process (the harness reads its memory, kills it)
    started: float = field(default_factory=time.time)


class _HeldModel:
    """A model in Serve's multiplexing LRU. Serve calls ``__del__`` when it evicts the model."""

    def __init__(self, ref: str, upscaler: Upscaler, on_evict) -> None:
        self.ref, self.upscaler, self._on_evict = ref, upscaler, on_evict

    def __del__(self) -> None:
        # Called by Serve's LRU on eviction and again by Python's garbage collector: act once.
        on_evict, self._on_evict = getattr(self, "_on_evict", None), None
        if on_evict is not None:
            on_evict(self)


@dataclass(frozen=True)
class _ModelCard:
    """What /v1/models says about a model that this replica has not loaded."""

    name: str
    version: str
    scale: int
    resolved: str


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=32)
@serve.ingress(app)
class UpscaleService:
    """One replica: the default generator, an LRU of others, a batch queue for small inputs, tiling for large ones."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.limits = options.limits
        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        self.stats = _Stats()
        self._infer_lock = threading.Lock()  # one forward pass at a time per replica
        self._swap_lock = asyncio.Lock()
        self._refresher: asyncio.Task | None = None
        # The model is loaded by reconfigure(), which Serve calls with user_config (always set by build_app,
        # possibly overridden by a Serve config) before the replica takes requests.
        self.config: ModelConfig | None = None
        self.upscaler: Upscaler | None = None
        self._budget = PixelBudget(int(options.memory_budget_mpx * 1e6))
        self._rate: RateMeter | None = None  # seeded by device once the model is loaded (see _limits)
        self._upscale_batch.set_max_batch_size(options.max_batch_size)
        self._upscale_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)
        # The other models: Serve's multiplexing keeps the LRU (and tells the proxy which replica holds
        # what); the decorator is applied here because its size is an option. ``_held`` mirrors the LRU.
        self._held: dict[str, _HeldModel] = {}
        self._cards: dict[str, _ModelCard] = {}  # by pinned URI: what /v1/models shows for unloaded models
        self._held_model = serve.multiplexed(max_num_models_per_replica=options.max_models_per_replica)(self._multiplexed_loader())

    # -------------------------------------------------------------------------------- model updates

    def _load(self, config: ModelConfig, source: ModelSource | None = None) -> Upscaler:
        source = source or resolve_model(config.model, tracking_uri=config.tracking_uri)
        upscaler = load_upscaler(source, runtime=self.options.runtime, options=self.options.upscaler_options())
        log.info("loaded %s (version %s) from %s", source.name, upscaler.version, source.uri)
        return upscaler

    async def _swap(self, config: ModelConfig, source: ModelSource | None = None, *, refresh: bool = False) -> None:
        """Load in a thread while the current model keeps serving, then swap in one assignment.

        A refresh is dropped if reconfigure() changed the model meanwhile (it would bring the old one back).
        """
        async with self._swap_lock:
            if refresh and config != self.config:
                return
            upscaler = await asyncio.to_thread(self._load, config, source)
            self.upscaler, self.config = upscaler, config
            self.stats.model_loads += 1

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this at start and whenever ``user_config`` changes (no replica restart)."""
        config = ModelConfig.from_dict(user_config)
        if self.config is None or (config.model, config.tracking_uri) != (self.config.model, self.config.tracking_uri):
            await self._swap(config)
        else:
            self.config = config  # only the refresh interval changed
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._follow_alias())

    async def _follow_alias(self) -> None:
        """Re-resolve a registry alias periodically; load the new version when it moves."""
        while True:
            interval = self.config.refresh_interval_s
            await asyncio.sleep(interval or 5.0)
            current = self.upscaler.source
            if not interval or current is None or not current.is_alias:
                continue
            config = self.config
            try:
                source = await asyncio.to_thread(resolve_model, config.model, tracking_uri=config.tracking_uri)
                if source.uri != self.upscaler.source.uri:
                    log.info("%s moved to %s: loading it", config.model, source.uri)
                    await self._swap(config, source, refresh=True)
            except Exception:  # noqa: BLE001 - a registry hiccup must not stop serving the current model
                log.exception("could not refresh %s; still serving %s", config.model, current.uri)

    # -------------------------------------------------------------------------------- several models

    @property
    def served_models(self) -> list[str]:
        """The default model, then the allow-list: the references a request may name."""
        default = self.config.model if self.config else self.options.model
        return [default, *(ref for ref in dict.fromkeys(self.options.allowed_models) if ref != default)]

    def _multiplexed_loader(self):
        async def load_model(ref: str) -> _HeldModel:
            config = ModelConfig(ref, self.config.tracking_uri, 0)
            held = _HeldModel(ref, await asyncio.to_thread(self._load, config), self._evicted)
            self._held[ref] = held
            self.stats.model_loads += 1
            return held

        return load_model

    def _evicted(self, held: _HeldModel) -> None:
        if self._held.get(held.ref) is held:
            del self._held[held.ref]
            self.stats.model_evictions += 1
            log.info("unloaded %s (least recently used)", held.ref)

    def _requested_model(self, query: str | None) -> str | None:
        """The model a request names: the routing header (Serve hands it over) or ``?model=``; None: the default."""
        header = serve.get_multiplexed_model_id()
        if header and query and header != query:
            raise ClientError(400, f"the {MODEL_HEADER} header and ?model= name different models; send one")
        return header or query or None

    async def _upscaler_for(self, ref: str | None) -> Upscaler:
        default = self._loaded()
        if ref is None or ref == self.config.model:
            return default
        if ref not in self.options.allowed_models:
            raise ClientError(404, f"model {ref[:200]!r} is not served here; GET /v1/models lists the models this endpoint serves")
        try:
            return (await self._held_model(ref)).upscaler
        except UserError as exc:  # allowed but gone (deleted from the registry, say): not the client's fault
            raise ClientError(503, f"model {ref} cannot be loaded now: {exc}") from None

    def _card(self, ref: str) -> _ModelCard:
        """Name, version and scale of a model without keeping it loaded (cached by the pinned URI)."""
        source = resolve_model(ref, tracking_uri=self.config.tracking_uri)
        if source.uri not in self._cards:
            with fetched_model(source) as local:
                net_g, _ = load_generator(local)
            version = source.version or weights_digest(net_g)
            self._cards[source.uri] = _ModelCard(source.name, version, net_g.config.scale, source.uri)
        return self._cards[source.uri]

    def _describe(self, ref: str) -> dict[str, Any]:
        held = self._held.get(ref)
        upscaler = self.upscaler if ref == self.config.model else held.upscaler if held else None
        if upscaler is not None:
            source = upscaler.source
            card = _ModelCard(source.name if source else "", upscaler.version, upscaler.scale, source.uri if source else "")
        else:
            try:
                card = self._card(ref)
            except Exception as exc:  # noqa: BLE001 - gone from the registry, or the registry is down: list it as such
                log.warning("cannot describe %s: %s", ref, exc)
                return {"id": ref, "source": ref, "default": False, "loaded": False, "error": " ".join(str(exc).split())[:300]}
        return {"id": ref, "name": card.name, "version": card.version, "scale": card.scale, "source": ref,
                "resolved": card.resolved, "default": ref == self.config.model, "loaded": upscaler is not None}

    # -------------------------------------------------------------------------------- inference

    def _run_groups(self, jobs: list[tuple[Upscaler, DecodedImage, float | None]]) -> list[tuple[DecodedImage | None, int]]:
        """Upscale a batch, one forward pass per model and image size: [(result, images in its pass)];
        a job whose deadline passed before its pass gets (None, 0) (the caller answers 504)."""
        groups: dict[tuple[int, tuple[int, int]], list[int]] = {}
        for i, (upscaler, image, _) in enumerate(jobs):
            groups.setdefault((id(upscaler), image.size), []).append(i)
        results: list[tuple[DecodedImage | None, int]] = [(None, 0)] * len(jobs)
        with self._infer_lock:
            for indices in groups.values():
                now = time.monotonic()
                live = [i for i in indices if jobs[i][2] is None or jobs[i][2] > now]
                if not live:
                    continue
                upscaler = jobs[live[0]][0]
                deadlines = [jobs[i][2] for i in live]
                # Small images: one pass of milliseconds; the latest deadline lets the pass finish for all.
                deadline = None if None in deadlines else max(deadlines)
                started = time.perf_counter()
                outputs = upscaler.upscale_images([jobs[i][1] for i in live], deadline=deadline)
                self._measure(outputs, time.perf_counter() - started)
                for i, out in zip(live, outputs):
                    results[i] = (out, len(live))
            self.stats.batches += len(groups)
            self.stats.batched_images += len(jobs)
            self.stats.largest_batch = max([self.stats.largest_batch, *map(len, groups.values())])
        return results

    def _measure(self, outputs: list[DecodedImage], seconds: float) -> None:
        if self._rate is not None:
            self._rate.add(sum(out.size[0] * out.size[1] for out in outputs), seconds)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _upscale_batch(self, jobs: list[tuple[Upscaler, DecodedImage, float | None]]) -> list[tuple[DecodedImage | None, int]]:
        # Each job carries its model, chosen before it queued (so a swap meanwhile changes nothing for it).
        # Serve already splits batches by the routing header; ?model= requests share a queue and are
        # grouped by model here.
        return await asyncio.to_thread(self._run_groups, jobs)

    def _run_alone(self, upscaler: Upscaler, image: DecodedImage, deadline: float | None) -> DecodedImage:
        with self._infer_lock:
            started = time.perf_counter()
            out = upscaler.upscale_image(image, deadline=deadline)
            self._measure([out], time.perf_counter() - started)
            return out

    def _loaded(self) -> Upscaler:
        if self.upscaler is None:
            raise ClientError(503, "no model loaded yet; retry shortly")
        return self.upscaler

    async def _upscale(self, upscaler: Upscaler, image: DecodedImage, deadline: float | None) -> tuple[DecodedImage, int]:
        width, height = image.size
        if max(width, height) <= self.options.batch_max_side:
            result, group = await self._upscale_batch((upscaler, image, deadline))
            if result is None:
                raise DeadlineExceededError("the compute deadline passed while the request waited for its batch")
            return result, group
        self.stats.tiled_alone += 1
        return await asyncio.to_thread(self._run_alone, upscaler, image, deadline), 1

    # -------------------------------------------------------------------------------- time and memory

    def _deadline_s(self, upscaler: Upscaler, asked: float | None = None) -> float | None:
        """This request's compute budget in seconds (None: no deadline): the server's, or the client's if shorter."""
        given = self.options.deadline_s
        if given is None:
            given = DEFAULT_DEADLINE_S.get(upscaler.device.type, DEFAULT_DEADLINE_S["cpu"])
        return min(given, asked) if given and asked else (given or asked or None)

    def _rate_for(self, upscaler: Upscaler) -> RateMeter:
        if self._rate is None:
            seed = self.options.rate_mpx_s or DEFAULT_RATE_MPX_S.get(upscaler.device.type, DEFAULT_RATE_MPX_S["cpu"])
            self._rate = RateMeter(seed)
        return self._rate

    async def _admit(self, upscaler: Upscaler, data: bytes, asked: float | None) -> tuple[int, float | None]:
        """Refuse up front what cannot fit or finish; then hold the request's output pixels in the budget.

        Returns (pixels held, deadline as time.monotonic()); the caller releases the pixels."""
        size = declared_size(data)
        if size is None or size[0] * size[1] > self.limits.max_pixels:
            return 0, None  # decode_image answers it (corrupt, unsupported, too many pixels): nothing is held
        width, height = size
        pixels = width * height * upscaler.scale**2
        mpx = pixels / 1e6
        budget = self._budget.capacity / 1e6
        if pixels > self._budget.capacity:
            self.stats.refused_over_budget += 1
            raise ClientError(413, f"a {width}x{height} input makes {mpx:.1f} MP of output, more than this replica's memory "
                                   f"budget of {budget:.0f} MP (about {budget * BYTES_PER_OUTPUT_PIXEL / 1024:.1f} GiB); "
                                   f"send at most {budget / upscaler.scale**2:.1f} MP of input")
        limit = self._deadline_s(upscaler, asked)
        rate = self._rate_for(upscaler)
        estimate = rate.estimate_s(pixels)
        if limit is not None and estimate > limit:
            self.stats.refused_too_slow += 1
            raise ClientError(413, f"a {width}x{height} input makes {mpx:.1f} MP of output: about {estimate:.0f} s at this "
                                   f"replica's {rate.mpx_s:.2f} MP/s, over the {limit:.0f} s deadline; send a smaller image")
        ahead = rate.estimate_s(self._budget.pending)
        if limit is not None and ahead + estimate > limit:
            self.stats.refused_busy += 1
            raise ClientError(503, f"busy: about {ahead:.3g} s of work is queued ahead and this request needs about "
                                   f"{estimate:.3g} s, over the {limit:.3g} s deadline; retry later",
                              retry_after=min(math.ceil(ahead), math.ceil(limit)))
        deadline = None if limit is None else time.monotonic() + limit
        try:
            await self._budget.acquire(pixels, None if limit is None else limit - estimate)
        except asyncio.TimeoutError:
            self.stats.refused_busy += 1
            raise ClientError(503, f"busy: no room in the memory budget before the {limit:.3g} s deadline; retry later",
                              retry_after=self.options.retry_after_s) from None
        self.stats.peak_output_mpx = max(self.stats.peak_output_mpx, self._budget.peak / 1e6)
        return pixels, deadline

    # -------------------------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse, summary="The web page: upload an image, compare before and after")
    async def page(self, request: Request) -> Response:
        return HTMLResponse(page_html(request.scope.get("root_path", "")), headers={"Content-Security-Policy": PAGE_POLICY})

    @app.post("/v1/upscale", response_class=Response, summary="Upscale one image")
    async def upscale(
        self,
        request: Request,
        format: str | None = Query(None, description="png, jpeg or webp; default: the input's format"),  # noqa: A002
        quality: int | None = Query(None, description="1..100, for jpeg and webp output"),
        model: str | None = Query(None, max_length=MAX_MODEL_REF, description=(
            f"a model of GET /v1/models (its id); default: the default model. The {MODEL_HEADER} header does "
            "the same and lets Serve route the request to a replica that already holds the model")),
        deadline_s: float | None = Query(None, gt=0, description=(
            "a compute deadline in seconds for this request; it can only shorten the server's own")),
    ) -> Response:
        self.stats.requests += 1
        try:
            fmt = _check_params(format, quality)
            upscaler = await self._upscaler_for(self._requested_model(model))
            data = await read_image_bytes(request, self.limits, idle_timeout=self.options.body_idle_timeout_s or None,
                                          total_timeout=self.options.body_timeout_s or None)
            held, deadline = await self._admit(upscaler, data, deadline_s)
        except ClientError as exc:
            return _error(exc.status, str(exc), retry_after=exc.retry_after)
        try:
            # Everything that allocates per output pixel happens while its pixels are held.
            return await self._upscale_held(upscaler, data, fmt, quality, deadline)
        except ClientError as exc:
            return _error(exc.status, str(exc), retry_after=exc.retry_after)
        except ImageError as exc:
            return _error(STATUS_FOR_KIND.get(exc.kind, 400), str(exc))
        except DeadlineExceededError as exc:
            self.stats.deadline_stopped += 1
            return _error(504, f"{exc} (deadline {self._deadline_s(upscaler, deadline_s):.3g} s); send a smaller image or retry later")
        finally:
            if held:
                self._budget.release(held)
            self.stats.rate_mpx_s = round(self._rate.mpx_s, 3) if self._rate else 0.0

    async def _upscale_held(self, upscaler: Upscaler, data: bytes, fmt: str | None, quality: int | None,
                            deadline: float | None) -> Response:
        image = await asyncio.to_thread(decode_image, data, limits=self.limits)
        del data  # the encoded body is not needed past decoding
        fmt = fmt or OUTPUT_FORMATS.get(image.format.lower(), "png")  # the input's format; BMP -> PNG
        result, group = await self._upscale(upscaler, image, deadline)
        body = await asyncio.to_thread(encode_image, result, fmt, quality=quality or self.options.quality)
        headers = {
            "X-Input-Size": _size(image),
            "X-Output-Size": _size(result),
            "X-Model-Name": upscaler.source.name if upscaler.source else "",
            "X-Model-Version": upscaler.version,
            "X-Batch-Size": str(group),
        }
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)

    @app.get("/healthz", summary="Liveness: 200 once the model is loaded")
    async def healthz(self) -> Any:
        if self.upscaler is None:
            return _error(503, "no model loaded yet")
        return {"status": "ok", "model_version": self.upscaler.version}

    @app.get("/v1/models", summary="The models this endpoint serves (the default first)")
    async def models(self) -> Any:
        try:
            self._loaded()
        except ClientError as exc:
            return _error(exc.status, str(exc))
        described = await asyncio.to_thread(lambda: [self._describe(ref) for ref in self.served_models])
        self.stats.rss_mib, self.stats.peak_rss_mib = _memory_mib()
        return {"models": described, "max_models_per_replica": self.options.max_models_per_replica,
                "replica_stats": asdict(self.stats)}


# ------------------------------------------------------------------------------------------ builder, runner


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Serve application builder (``srgan.distributed.serving:build_app``): ``args`` are :class:`ServeOptions` fields.

    Deployment options given in a Serve config's ``deployments:`` section override those set here.
    (Serve wants a builder of exactly one parameter; :func:`application` also takes the token.)
    """
    return application(args)


def application(args: dict[str, Any] | None = None, *, api_token: str | None = None) -> serve.Application:
    """:func:`build_app` for Python callers, with the optional bearer token.

    ``api_token`` (Python callers such as ``pipelines/serve.py``) reaches the replicas as its SHA-256 in
    their runtime_env (``SRGAN_API_TOKEN_SHA256``: Ray logs runtime_envs whole, so never the token
    itself); a Serve config gives ``SRGAN_API_TOKEN`` to the nodes' environment instead (a Kubernetes
    Secret), so that no config file holds it.
    """
    options = ServeOptions.from_args(args)
    deployment = options.deployment_options()
    if api_token:
        actor = deployment["ray_actor_options"]
        actor["runtime_env"] = {"env_vars": {TOKEN_DIGEST_ENV: _token_digest(api_token)}}
    return UpscaleService.options(**deployment).bind(options)


def _portable_ref(source: ModelSource) -> str:
    """A reference that means the same in a replica's working directory: a registry reference stays as it
    is (an alias must stay one); a checkpoint becomes its absolute path or URI."""
    return source.requested if source.tracking_uri is not None else source.uri


def _portable(options: ServeOptions, source: ModelSource, allowed: list[ModelSource] = ()) -> ServeOptions:
    """Options that mean the same in a replica's working directory: absolute paths, the store's absolute URI."""
    store = next((s.tracking_uri for s in (source, *allowed) if s.tracking_uri is not None), options.tracking_uri)
    return replace(options, model=_portable_ref(source), tracking_uri=store,
                   allowed_models=tuple(dict.fromkeys(_portable_ref(s) for s in allowed)))


def _report(line: str) -> None:
    print(line, flush=True)  # flushed: a redirected stdout must show "stopping" even if shutdown then hangs


def run_server(options: ServeOptions, *, host: str = "127.0.0.1", port: int = 8000, api_token: str | None = None,
               report=_report) -> None:
    """Deploy on Ray Serve (the cluster at RAY_ADDRESS, else a local one) and block until interrupted.

    The model is checked before Ray starts, so a missing or unregistered model is a one-line error.
    On Ctrl-C or SIGTERM the application is deleted (and Serve shut down if this call started it).
    """
    from srgan.distributed.cluster import init_ray  # RAY: the project's one way to join or start a cluster

    source = resolve_model(options.model, tracking_uri=options.tracking_uri)
    allowed = [resolve_model(ref, tracking_uri=options.tracking_uri) for ref in options.allowed_models]
    options = _portable(options, source, allowed)
    local_cluster = not os.environ.get("RAY_ADDRESS")  # init_ray starts one, as children of this process
    if local_cluster:
        _become_subreaper()
    init_ray()
    already_running = _serve_is_running()
    serve.start(http_options={"host": host, "port": port})
    # Both stop the server. SIGINT explicitly too: a process started in the background by a
    # non-interactive shell inherits SIGINT as ignored, and Python then keeps ignoring it.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        serve.run(application(asdict(options), api_token=api_token), name=APP_NAME, route_prefix="/")
        base = f"http://{host}:{port}"
        if api_token:
            report(f"/v1/* needs 'Authorization: Bearer <token>' ({TOKEN_ENV}); /healthz and the web page stay open")
        report(f"serving {source.requested} ({source.uri}) at {base}/v1/upscale  (web page: {base}/  API docs: {base}/docs)")
        for ref in options.allowed_models:
            report(f"  also {ref}: {base}/v1/upscale?model={quote(ref, safe='')}")
        report("press Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        report("stopping")
    finally:
        if not stop_server(already_running=already_running, local_cluster=local_cluster, report=report):
            # A Ray call is still stuck in a thread: atexit's ray.shutdown() would wait on it again.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


# Ctrl-C or SIGTERM to the whole process group also reaches the local cluster's raylet and workers, so
# Serve's controller can no longer reach them and its shutdown waited 30 s before giving up (40 s in
# all, measured). Every step of the stop is bounded instead, within this budget.
STOP_BUDGET_S = 8.0
SERVE_STOP_LOCAL_S = 3.0  # the local cluster goes away next anyway: draining gets only this long


def stop_server(*, already_running: bool, local_cluster: bool, report=_report) -> bool:
    """Delete the application (or shut Serve down if this process started it), then, for a local
    cluster, stop Ray and kill whatever it left. Bounded by STOP_BUDGET_S; False if a step timed out."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut a bounded cleanup short
    deadline = time.monotonic() + STOP_BUDGET_S
    started = _descendants() if local_cluster else []
    stop = (lambda: serve.delete(APP_NAME)) if already_running else serve.shutdown
    clean = _bounded(stop, SERVE_STOP_LOCAL_S if local_cluster else STOP_BUDGET_S - 1)
    if not clean:
        report("Serve did not stop in time (its controller or raylet is gone); stopping Ray")
    if local_cluster:
        import ray

        clean = _bounded(ray.shutdown, max(1.0, deadline - time.monotonic() - 1)) and clean
        # Whatever the local cluster left behind (its processes are ours): those below us now, and those
        # seen below us when the stop began, even if a dying parent has since handed them to init.
        leftovers = set(started) | set(_descendants())
        while leftovers and time.monotonic() < deadline + 1:
            _kill(leftovers)
            time.sleep(0.1)
            leftovers = {pid for pid in leftovers | set(_descendants()) if _running(pid)}
    return clean


def _become_subreaper() -> None:
    """Linux: orphans below this process are re-parented to it, not to init. Ctrl-C to the group kills
    the local raylet before its agents (ray::RuntimeEnvAgent ignores SIGINT), and an orphaned agent
    then lived on, found by nothing (measured: still there a minute later); now _descendants sees it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init as usual


def _bounded(fn, timeout: float) -> bool:
    """Run ``fn`` in a daemon thread; True if it finished (errors logged) within ``timeout`` seconds."""
    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a dying cluster raises all sorts; stopping goes on
            log.warning("while stopping: %s failed", getattr(fn, "__name__", "a step"), exc_info=True)

    thread = threading.Thread(target=run, name="srgan-stop", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def _descendants() -> list[int]:
    """Every process below this one (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, found = list(children.get(os.getpid(), [])), []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie child of ours is gone; it is reaped when we exit)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _serve_is_running() -> bool:
    """True if a Serve controller already runs on the connected cluster (then we leave it running)."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


def check_options(args: dict[str, Any]) -> ServeOptions:
    """:meth:`ServeOptions.from_args` with errors as :class:`UserError` (for CLIs)."""
    try:
        return ServeOptions.from_args(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
