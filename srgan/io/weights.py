"""Pretrained ImageNet weights as torchvision users expect them: torchvision's cache, filled once per node.

torchvision keeps its weights in ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``).
A file already there is used as it is: torch.hub does not re-hash a cached file either, so a file a
user copied there is trusted like one torchvision downloaded. A missing file is downloaded the way
torchvision's loader does it (``WeightsEnum.get_state_dict`` is ``load_state_dict_from_url(check_hash=True)``,
which calls ``torch.hub.download_url_to_file``), with its hash check: the hex digits after a ``-`` of
the file name are a SHA-256 prefix.

Several Ray Train workers on one node ask at the same moment. torch.hub writes a ``.partial`` file and
renames it when complete, so nobody reads a half-written file, but it does not stop two processes
from both downloading 548 MB: a file lock beside the cached file lets one download while the others
wait, then find the file.

When the download is impossible (no network), the error is one line that names both fixes: put the
file in the cache (let the node download it once, or copy it there), or name the weights explicitly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import torch

from srgan.core.losses import VGG19_IMAGENET_URL
from srgan.core.losses import check_vgg19_weights as check_local_vgg19_weights
from srgan.core.losses import is_imagenet
from srgan.errors import VGGWeightsNotFoundError, WeightsNotFoundError

__all__ = ["torch_cache_file", "ensure_cached", "ensure_vgg19_cached", "check_vgg19_weights"]

log = logging.getLogger(__name__)

_VGG19_URL = VGG19_IMAGENET_URL
_VGG19_FIX = "pass an explicit file path or URI (--vgg-weights PATH|URI)"


def torch_cache_file(url: str) -> Path:
    """Where torchvision caches the weights at ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this node (and every thread: each opens its own file).

    The lock file is never deleted: removing it while another process waits on it would let a third
    process lock a new file of the same name, and both would download.
    """
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _download_failed_message(*, what: str, url: str, path: Path, reason: str, other_fix: str) -> str:
    host = urllib.parse.urlparse(url).netloc
    return (
        f"{what} not found in torchvision's cache ({path}) and the download from {url} failed ({reason}). "
        f"Either put '{path.name}' in {path.parent} (let this node reach {host} once, or copy the file there; "
        f"TORCH_HOME sets the cache root), or {other_fix}."
    )


def _download(url: str, path: Path) -> None:
    """torchvision's loader, minus its print and its load: ``WeightsEnum.get_state_dict`` is
    ``load_state_dict_from_url(check_hash=True)``, which prints a line to stdout (a CLI's JSON lives
    there, and redirecting the process's stdout would swallow other threads' output), then calls exactly
    this: a download to a ``.partial`` file, the SHA-256 prefix from the file name checked, a rename."""
    match = torch.hub.HASH_REGEX.search(path.name)
    log.info("downloading %s to %s (once per node)", url, path)
    torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=False)


def ensure_cached(url: str, *, what: str, other_fix: str, error: type[WeightsNotFoundError] = WeightsNotFoundError) -> Path:
    """The cached file for ``url``, downloading it once per node (as torchvision's loader does) if missing.

    Args:
        url: torchvision's weights URL (``<name>-<sha256 prefix>.pth``), e.g. ``VGG19_Weights.IMAGENET1K_V1.url``.
        what: the weights, for the error message ("VGG19 ImageNet weights").
        other_fix: the second way to supply them, for the error message ("pass ... (--vgg-weights PATH|URI)").
        error: the :class:`WeightsNotFoundError` subclass to raise.

    Raises:
        WeightsNotFoundError: not cached and not downloadable (no network, a bad hash, an unwritable
            cache); one line that names both fixes.
    """
    path = torch_cache_file(url)
    if path.is_file():  # the common case: no lock, no network
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _node_lock(path.with_name(path.name + ".lock")):
            if not path.is_file():  # another worker may have finished it while this one waited
                _download(url, path)
    except (OSError, RuntimeError) as exc:  # URLError and refused connections are OSErrors; a bad hash is a RuntimeError
        raise error(_download_failed_message(what=what, url=url, path=path, reason=_one_line(exc), other_fix=other_fix)) from exc
    return path


def ensure_vgg19_cached() -> Path:
    """torchvision's ``VGG19_Weights.IMAGENET1K_V1`` file in this node's cache, downloaded once if missing."""
    return ensure_cached(_VGG19_URL, what="VGG19 ImageNet weights", other_fix=_VGG19_FIX, error=VGGWeightsNotFoundError)


def check_vgg19_weights(source: str | os.PathLike | None = None) -> str:
    """Like :func:`srgan.core.losses.check_vgg19_weights` (same argument, same one-line description), but
    ``"imagenet"``/``None`` is made available: taken from this node's cache, else downloaded once.

    What a driver runs before Ray starts, so a node without network fails there, in one line.

    Raises:
        VGGWeightsNotFoundError: the weights cannot be found (or downloaded); the message says how to supply them.
    """
    if is_imagenet(source):
        return str(ensure_vgg19_cached())
    return check_local_vgg19_weights(source)
