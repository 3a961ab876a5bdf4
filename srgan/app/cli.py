"""Shared CLI plumbing for pipelines/*.py: one-line errors and a non-zero exit for a user's mistake,
logging set-up, the flags several CLIs share. Nothing in the package imports this module."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from srgan.errors import UserError

__all__ = ["run_cli", "setup_logging", "add_model_arguments", "add_runtime_argument", "add_limit_arguments", "limits_from_args"]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # MLflow announces each schema step of a new SQLite store at INFO
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit: its return code, 2 with ``error: <one line>`` for a user's mistake, 130 on Ctrl-C."""
    try:
        code = main()
    except SystemExit:  # argparse's --help and usage errors: already reported
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as exc:  # every error a user can fix (srgan.errors), and only those
        message = " ".join(str(exc).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def add_model_arguments(parser, *, default_model: str) -> None:
    """``--model`` and ``--tracking-uri``, as every CLI that loads a generator takes them."""
    parser.add_argument("--model", default=default_model, help=f"checkpoint directory/URI or models:/NAME@ALIAS (default {default_model})")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ URIs (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def add_runtime_argument(parser) -> None:
    """``--runtime torch|onnxruntime``: what runs the generator (docs/export.md says when to pick which)."""
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                        help="torch (default; any device) or onnxruntime (CPU; a checkpoint is exported on the fly, "
                             "an export from pipelines/export.py loads as is; needs pip install -e \".[export]\")")


def add_limit_arguments(parser, *, what: str) -> None:
    """``--max-mb`` and ``--max-megapixels`` (the ImageLimits defaults); ``what`` names the input."""
    parser.add_argument("--max-mb", type=float, default=20.0, help=f"largest {what}, in MB")
    parser.add_argument("--max-megapixels", type=float, default=16.0, help="largest input image, in megapixels")


def limits_from_args(args):
    """The :class:`srgan.core.images.ImageLimits` that ``--max-mb``/``--max-megapixels`` ask for."""
    from srgan.core.images import ImageLimits

    return ImageLimits(max_bytes=int(args.max_mb * 1024 * 1024), max_pixels=int(args.max_megapixels * 1_000_000))
