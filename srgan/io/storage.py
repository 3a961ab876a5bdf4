"""URIs -> filesystems. Local paths, ``file://``, ``s3://`` (pyarrow's S3FileSystem), and ``http(s)://`` reads.

S3 is configured only by the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION), an instance role, or an
explicit ``endpoint`` argument. No credentials are ever passed through code or config files.

Object stores fail transiently (``503 SlowDown`` when a prefix is hot, ``500 InternalError``, a reset
connection): every S3 client made here retries those with bounded attempts and jittered exponential
backoff (:data:`S3_MAX_ATTEMPTS`), pyarrow through ``AwsStandardS3RetryStrategy`` and boto3 through
botocore's ``standard`` retry mode. A faulted request that is retried leaves the store as a fault-free
run leaves it (GETs and whole-object PUTs are idempotent), so outputs do not depend on the faults
(benchmarks/faults/data.py, tests/test_s3_faults.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["S3_MAX_ATTEMPTS", "RetryingS3FileSystem", "s3_endpoint_url", "s3_filesystem", "s3_client", "resolve", "read_at_most", "fetch_to_local",
           "fetch_weights_file"]

# Attempts per S3 request, the first included. At a 20% transient-fault rate, 10 attempts leave about
# 1e-7 of the requests failed; the standard strategies' backoff (random up to 2^n s, at most 20 s)
# keeps a throttled prefix from being hammered. The AWS SDKs default to 3.
S3_MAX_ATTEMPTS = 10


def s3_endpoint_url(endpoint: str | None = None) -> str | None:
    """The S3 endpoint: ``endpoint``, else the standard variables (``AWS_ENDPOINT_URL_S3``, then
    ``AWS_ENDPOINT_URL``), else None (AWS itself)."""
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3FileSystem with a retry strategy that survives pickling.

    pyarrow 25 pickles an S3FileSystem without its ``retry_strategy`` (``__reduce__`` leaves it out), so
    the copy a Ray task unpickles would retry 3 times, AWS's default, whatever the driver set. This
    subclass pickles its own arguments and rebuilds itself, strategy included."""

    def __init__(self, *, max_attempts: int, **kwargs) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **kwargs)
        self._arguments = (max_attempts, kwargs)

    @property
    def max_attempts(self) -> int:
        return self._arguments[0]

    def __reduce__(self):
        return _rebuild_s3_filesystem, self._arguments


def _rebuild_s3_filesystem(max_attempts: int, kwargs: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts=max_attempts, **kwargs)


def s3_filesystem(endpoint: str | None = None, *, max_attempts: int = S3_MAX_ATTEMPTS) -> RetryingS3FileSystem:
    """An S3FileSystem from the standard AWS environment, with an optional endpoint override, that
    retries transient errors (``max_attempts`` per request, AWS's standard strategy), in this process
    and in every Ray worker it is pickled to (:class:`RetryingS3FileSystem`).

    Ray Train's checkpoints go through it too when the trainer passes it as
    ``RunConfig(storage_filesystem=...)`` with the storage path made bucket-relative."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    endpoint = s3_endpoint_url(endpoint)
    kwargs: dict = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
        # Custom endpoints (MinIO, moto, on-prem) generally want path-style addressing.
        kwargs["force_virtual_addressing"] = False
    return RetryingS3FileSystem(max_attempts=max_attempts, **kwargs)


def s3_client(endpoint: str | None = None, *, max_attempts: int = S3_MAX_ATTEMPTS):
    """A boto3 S3 client from the standard AWS chain that retries transient errors (botocore's
    ``standard`` mode: throttling, 5xx and connection errors, ``max_attempts`` per call), with
    path-style addressing on a custom endpoint (MinIO, moto, on-prem)."""
    import boto3  # here: listing and reading through pyarrow never need it
    from botocore.config import Config

    endpoint = s3_endpoint_url(endpoint)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(retries={"mode": "standard", "total_max_attempts": max_attempts},
                    s3={"addressing_style": "path"} if endpoint else None)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def read_at_most(fs: pafs.FileSystem, path: str, max_bytes: int) -> bytes:
    """A file's bytes, or its first ``max_bytes`` + 1 if it is larger (a ranged GET on S3): enough for
    a decoder to refuse it as too large, so a stray multi-GB object never enters memory. Not
    ``read(max_bytes + 1)`` on every file: pyarrow allocates what a read asks for, and a 20 MiB read
    cost 67 us against 11 us for a 54 kB file."""
    with fs.open_input_file(path) as f:
        return f.read(min(f.size(), max_bytes + 1))


def resolve(uri: str | os.PathLike, *, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path, ``file://`` or ``s3://`` URI."""
    uri = str(uri)
    if uri.startswith("s3://"):
        return s3_filesystem(s3_endpoint), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = urllib.parse.urlparse(uri).path
    elif "://" in uri:
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def fetch_to_local(uri: str | os.PathLike, *, s3_endpoint: str | None = None, into: str | os.PathLike | None = None) -> Path:
    """Make ``uri`` (a file or a directory) available as a local path, downloading if remote.

    Local paths are returned as they are. Remote objects land in ``into`` (an existing directory the
    caller removes), else in a fresh temporary directory that the caller owns: the returned path's
    parent. Registry references (``models:/``) are not storage: see :mod:`srgan.tracking.refs`.
    """
    uri = str(uri)
    if uri.startswith(("http://", "https://")):
        dest = _download_dir(into) / Path(urllib.parse.urlparse(uri).path).name
        with urllib.request.urlopen(uri, timeout=60) as resp, open(dest, "wb") as out:  # noqa: S310 (explicit user URI)
            shutil.copyfileobj(resp, out)
        return dest
    fs, path = resolve(uri, s3_endpoint=s3_endpoint)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    # copy_files handles a single object and a whole prefix alike, but wants a prefix's target to exist.
    dest = _download_dir(into) / Path(path).name
    if info.type == pafs.FileType.Directory:
        dest.mkdir()
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def _download_dir(into: str | os.PathLike | None) -> Path:
    return Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="srgan-fetch-"))


def fetch_weights_file(source: str | None, *, into: str | os.PathLike | None = None) -> str | None:
    """The VGG19 weights spec as a local file, for :func:`srgan.core.losses.build_content_loss`.

    ``"imagenet"`` (or ``None``): torchvision's cached file, downloaded once per node if missing
    (:func:`srgan.io.weights.ensure_vgg19_cached`); a remote URI (``s3://``, ``https://``): a local copy
    in ``into`` (else in a temporary directory the caller owns, see :func:`fetch_to_local`);
    ``"random"`` and local paths pass through.

    Raises:
        VGGWeightsNotFoundError: the weights cannot be found, fetched or downloaded (one line).
    """
    # Imported here: they pull in torch and torchvision, which listing and reading storage never need.
    from srgan.core.losses import is_imagenet
    from srgan.errors import VGGWeightsNotFoundError
    from srgan.io.weights import ensure_vgg19_cached

    if is_imagenet(source):
        return str(ensure_vgg19_cached())
    if source == "random" or "://" not in source or source.startswith("file://"):
        return source
    try:
        path = fetch_to_local(source, into=into)
    except (FileNotFoundError, OSError) as exc:
        raise VGGWeightsNotFoundError(f"VGG19 weights not found at {source}: {exc}") from exc
    return str(path)
