"""Decoding on the Train worker (``data.decode_device: cuda``): the same code runs with ``device="cpu"``
here. It must cut the same crops at the same positions as the Ray Data CPU decoder (bit for bit on
the CPU) and skip every bad object with the same kind; on CUDA, nvjpeg's difference from libjpeg is
measured and reported."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan.core.images import CropBatcher, ImageLimits, ImageTooLargeError, decode_random_crops_on
from srgan.io.datasets import decode_and_crop, decode_and_crop_on


def _jpeg(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, **params)
    return buf.getvalue()


def mixed_objects(photos_dir: Path, datasets_dir: Path) -> dict[str, bytes]:
    """Every branch of the device decoder: JPEGs it decodes (RGB, grey, progressive, 4:2:0, EXIF-rotated),
    those it hands to the CPU (CMYK, PNG, too small), and bad objects of every kind."""
    astronaut = Image.open(photos_dir / "astronaut.png").convert("RGB")
    chelsea = Image.open(photos_dir / "chelsea.png").convert("RGB")
    rotated = chelsea.getexif()
    rotated[0x0112] = 6  # stored landscape, shown portrait
    rocket = (photos_dir / "rocket.jpg").read_bytes()
    return {
        "astronaut.jpg": _jpeg(astronaut, subsampling=0),
        "rocket.jpg": rocket,  # a real camera-made JPEG
        "camera-grey.jpg": _jpeg(Image.open(photos_dir / "camera.png").convert("L")),
        "chelsea-progressive.jpg": _jpeg(chelsea, progressive=True, subsampling=2),
        "chelsea-rot6.jpg": _jpeg(chelsea, exif=rotated),
        "chelsea-cmyk.jpg": _jpeg(chelsea.convert("CMYK")),  # CPU fallback
        "coffee.png": (photos_dir / "coffee.png").read_bytes(),  # CPU fallback
        "t20.png": (datasets_dir / "train" / "T91" / "t20.png").read_bytes(),  # 78x78: too small for 96
        "tiny.jpg": _jpeg(chelsea.resize((60, 40))),  # too small, a JPEG
        "truncated.jpg": rocket[: len(rocket) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"shopping list: milk, eggs\n",
    }


def _batch(items: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {"bytes": np.array(list(items.values()), dtype=object), "path": np.array(list(items), dtype=object)}


def test_device_path_on_cpu_is_bit_exact_with_the_cpu_path(photos_dir, datasets_dir):
    batch = _batch(mixed_objects(photos_dir, datasets_dir))
    for crop_size, count, seed in ((96, 3, 0), (48, 2, 7)):
        ref, ref_skips = decode_and_crop(batch, crop_size=crop_size, crops_per_image=count, rng=np.random.default_rng(seed), limits=ImageLimits())
        crops, skips = decode_and_crop_on(batch, crop_size=crop_size, crops_per_image=count, rng=np.random.default_rng(seed),
                                          limits=ImageLimits(), device="cpu")
        assert skips == ref_skips  # same objects, same kinds, same order
        assert crops.dtype == torch.uint8 and crops.device.type == "cpu"
        assert crops.shape == ref["gt"].shape and len(crops) > 0
        assert torch.equal(crops, torch.from_numpy(ref["gt"]))  # same positions, same values
    # At 48 px t20 (78x78) fits and tiny (60x40) does not.
    assert {path: kind for kind, path in ref_skips} == {"tiny.jpg": "too_small", "truncated.jpg": "corrupt", "empty.jpg": "empty", "notes.jpg": "not_image"}
    kinds = {path: kind for kind, path in decode_and_crop_on(batch, crop_size=96, crops_per_image=1, rng=np.random.default_rng(),
                                                             limits=ImageLimits(), device="cpu")[1]}
    assert kinds == {"t20.png": "too_small", "tiny.jpg": "too_small", "truncated.jpg": "corrupt", "empty.jpg": "empty", "notes.jpg": "not_image"}


def test_limits_are_checked_before_the_device_sees_an_image(photos_dir, datasets_dir):
    items = mixed_objects(photos_dir, datasets_dir)
    out = decode_random_crops_on([items["astronaut.jpg"], items["rocket.jpg"]], crop_size=32, count=1, rng=np.random.default_rng(),
                                 device="cpu", limits=ImageLimits(max_pixels=270_000))
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (1, 3, 32, 32)  # 512 x 512 = 262 144 pixels
    assert isinstance(out[1], ImageTooLargeError)  # 640 x 427 = 273 280 pixels


def test_crop_batcher_regroups_short_batches_and_drops_the_remainder():
    parts = [torch.arange(n * 3 * 2 * 2, dtype=torch.int64).reshape(n, 3, 2, 2) + 1000 * i for i, n in enumerate((3, 0, 5, 1, 4))]
    batcher = CropBatcher(4)
    out = [b for part in parts for b in batcher.add(part)] + list(batcher.finish())
    assert [len(b) for b in out] == [4, 4, 4]  # 13 crops: three full batches, one dropped
    assert torch.equal(torch.cat(out), torch.cat(parts)[:12])  # in order, nothing duplicated

    generator = torch.Generator().manual_seed(0)
    mixing = CropBatcher(4, shuffle_pool=8, generator=generator)
    out = [b for part in parts for b in mixing.add(part)] + list(mixing.finish())
    assert [len(b) for b in out] == [4, 4, 4]
    flat = torch.cat(out)
    ids = flat[:, 0, 0, 0].tolist()
    assert len(set(ids)) == 12 and set(ids) <= set(torch.cat(parts)[:, 0, 0, 0].tolist())  # distinct crops, each once
    assert ids != sorted(ids)  # drawn from a permuted pool, not in arrival order


@pytest.mark.gpu
def test_nvjpeg_crops_against_libjpeg(photos_dir, datasets_dir):
    """nvjpeg's IDCT and upsampling are not libjpeg's: same positions and skips, values within a few
    levels. Prints the maximum difference (the figure docs/performance.md reports)."""
    batch = _batch(mixed_objects(photos_dir, datasets_dir))
    ref, ref_skips = decode_and_crop(batch, crop_size=96, crops_per_image=4, rng=np.random.default_rng(3), limits=ImageLimits())
    crops, skips = decode_and_crop_on(batch, crop_size=96, crops_per_image=4, rng=np.random.default_rng(3), limits=ImageLimits(), device="cuda")
    assert skips == ref_skips and crops.device.type == "cuda" and crops.shape == ref["gt"].shape
    diff = (crops.cpu().int() - torch.from_numpy(ref["gt"]).int()).abs()
    print(f"nvjpeg vs libjpeg: max |diff| {int(diff.max())}, mean {float(diff.float().mean()):.3f} levels")
    assert int(diff.max()) <= 16 and float(diff.float().mean()) < 1.5
