"""Every error a user can fix, in one leaf module (it imports nothing from the project).

A CLI turns any :class:`UserError` into one line, ``error: <message>``, and exit status 2
(:func:`srgan.app.cli.run_cli`); Serve turns the image errors into 4xx answers. Each subclass is
raised by the layer that finds the problem; none of them needs that layer to be caught.
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "ConfigError",
    "CheckpointError",
    "ModelReferenceError",
    "WeightsNotFoundError",
    "VGGWeightsNotFoundError",
    "ImageError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "DeadlineExceededError",
]


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing path, bad layout). The message says how."""


class ConfigError(UserError):
    """A bad configuration value or key (one line, says what to fix)."""


class CheckpointError(UserError, ValueError):
    """A path or URI that holds no loadable generator checkpoint, or one that does not match."""


class ModelReferenceError(CheckpointError):
    """A ``models:/`` reference that the MLflow registry cannot resolve."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights (torchvision's ImageNet backbones) are needed and are neither in torchvision's
    cache nor downloadable; the message names both ways to supply them."""


class VGGWeightsNotFoundError(WeightsNotFoundError):
    """VGG19 ImageNet weights (the content loss) cannot be found; the message names both ways to supply them."""


class ImageError(UserError, ValueError):
    """A client's bad image. ``kind`` is a short machine-readable category."""

    kind = "invalid"


class ImageDecodeError(ImageError):
    kind = "corrupt"


class ImageTooLargeError(ImageError):
    kind = "too_large"


class UnsupportedImageError(ImageError):
    kind = "unsupported"


class DeadlineExceededError(UserError, TimeoutError):
    """Work given a deadline (``Upscaler.upscale_images(deadline=...)``) was still running when it passed:
    stopped between tiles or batches, its partial result dropped. Serve answers it with a 504."""
