"""The demo's data set, made offline from the real photos that scikit-image ships.

Training photos go to ``<root>/train/{colour,grey}/*.png`` (nested, to exercise recursive listing);
held-out validation photos go to ``<root>/val/HR/*.png`` (centre crops, so CPU validation is quick).
Validation LR images are made by ``degrade()`` (the directory has no LR_bicubic/ folder).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

__all__ = ["VAL_PHOTOS", "TRAIN_PHOTOS", "make_demo_dataset"]

log = logging.getLogger(__name__)

# Held out for validation: never used for training.
VAL_PHOTOS = ("chelsea.png", "coffee.png")
TRAIN_PHOTOS = (
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "page.png",
    "coins.png",
    "text.png",
)
_VAL_CROP = 192  # HR side of each validation crop (48x48 LR at x4)


def _photos_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - scikit-image is a runtime dependency
        raise RuntimeError("the demo data set is made from scikit-image's photos: pip install scikit-image") from exc
    return Path(skimage.data.__file__).parent


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def make_demo_dataset(root: str | Path) -> tuple[Path, Path]:
    """Write the demo set under ``root`` (once; kept if complete) and return ``(train_dir, val_dir)``."""
    root = Path(root)
    train_dir, val_dir = root / "train", root / "val"
    marker = root / ".complete"
    if marker.is_file():
        return train_dir, val_dir
    source = _photos_dir()
    for name in TRAIN_PHOTOS:
        img = Image.open(source / name)
        sub = "grey" if img.mode in ("L", "1", "I;16") else "colour"
        out = train_dir / sub / (Path(name).stem + ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        img.convert("L" if sub == "grey" else "RGB").save(out)
    (val_dir / "HR").mkdir(parents=True, exist_ok=True)
    for name in VAL_PHOTOS:
        img = Image.open(source / name).convert("RGB")
        _centre_crop(img, _VAL_CROP).save(val_dir / "HR" / (Path(name).stem + ".png"))
    marker.write_text(f"{len(TRAIN_PHOTOS)} training photos, {len(VAL_PHOTOS)} validation photos\n")
    log.info("demo data set written to %s (%d training photos, %d held-out validation photos)", root, len(TRAIN_PHOTOS), len(VAL_PHOTOS))
    return train_dir, val_dir
