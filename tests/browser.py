"""A real browser for the web page's tests (tests/test_serving.py, tests/test_serving_limits.py).

Headless Chromium (Debian's ``chromium``, driven by Playwright); every page is opened through
:class:`OfflinePage`, whose requests may only go to 127.0.0.1 (anything else is aborted and recorded).
Screenshots go to tests/artifacts/ (git-ignored); the tests print their paths. The ``browser`` and
``offline`` fixtures are in conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from conftest import load_photo

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `playwright install` would download a browser from outside
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 120_000  # an upscale on a loaded 2-core machine can take a while


class OfflinePage:
    """A browser page whose requests may only go to 127.0.0.1: anything else is aborted and recorded."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
        self.foreign: list[str] = []
        self.context.route("**/*", self._only_loopback)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)

    def _only_loopback(self, route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname != "127.0.0.1":
            self.foreign.append(url)
            route.abort()
        else:
            route.continue_()


def photo_file(folder: Path, name: str = "chelsea.png", size: tuple[int, int] = (120, 80)) -> Path:
    """A crop of a real photo (scikit-image's cat by default), width x height, as a PNG file."""
    width, height = size
    path = folder / f"cat_{width}x{height}.png"
    Image.fromarray(np.ascontiguousarray(load_photo(name)[40 : 40 + height, 100 : 100 + width])).save(path)
    return path


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def wait_for_result(page) -> None:
    page.wait_for_selector("#result:not([hidden])")


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))
