"""The project's value ranges, converted in one place (docs/design.md, "Value ranges").

``lq`` is in [0, 1]; ``gt`` and ``sr`` are in [-1, 1]; files and metrics use 0..255.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["uint8_to_unit", "unit_to_signed", "signed_to_unit"]


def uint8_to_unit(x: Tensor) -> Tensor:
    """uint8 0..255 -> float32 [0, 1]."""
    return x.float() / 255.0


def unit_to_signed(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def signed_to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] (not clamped)."""
    return (x + 1.0) * 0.5
