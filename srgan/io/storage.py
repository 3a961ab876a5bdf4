"""URIs -> filesystems. Local paths, ``file://``, ``s3://`` (pyarrow's S3FileSystem), and ``http(s)://`` reads.

S3 is configured only by the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION), an instance role, or an
explicit ``endpoint`` argument. No credentials are ever passed through code or config files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["s3_filesystem", "resolve", "fetch_to_local", "fetch_weights_file"]


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    """An S3FileSystem from the standard AWS environment, with an optional endpoint override."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
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
    return pafs.S3FileSystem(**kwargs)


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


def fetch_to_local(uri: str | os.PathLike, *, s3_endpoint: str | None = None) -> Path:
    """Make ``uri`` (a file or a directory) available as a local path, downloading if remote.

    Local paths are returned as they are. Remote objects land in a fresh temporary directory that
    the caller owns. Registry references (``models:/``) are not storage: see :mod:`srgan.tracking.refs`.
    """
    uri = str(uri)
    if uri.startswith(("http://", "https://")):
        dest = Path(tempfile.mkdtemp(prefix="srgan-fetch-")) / Path(urllib.parse.urlparse(uri).path).name
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
    dest = Path(tempfile.mkdtemp(prefix="srgan-fetch-")) / Path(path).name
    if info.type == pafs.FileType.Directory:
        dest.mkdir()
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest


def fetch_weights_file(source: str | None) -> str | None:
    """The VGG19 weights spec as a local file, for :func:`srgan.core.losses.build_content_loss`.

    ``"imagenet"`` (or ``None``): torchvision's cached file, downloaded once per node if missing
    (:func:`srgan.io.weights.ensure_vgg19_cached`); a remote URI (``s3://``, ``https://``): a local copy;
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
        path = fetch_to_local(source)
    except (FileNotFoundError, OSError) as exc:
        raise VGGWeightsNotFoundError(f"VGG19 weights not found at {source}: {exc}") from exc
    return str(path)
