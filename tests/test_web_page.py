"""The web page at ``/`` and the offline ``/docs``, in a real browser against the real Serve endpoint.

Headless Chromium (Debian's ``chromium``, driven by Playwright) opens the page of one Serve application
on 127.0.0.1 (started once for the module on the session's Ray cluster): it uploads a real photo
(picked, and dropped), waits for the result, reads the images' natural sizes, downloads the output;
a text file must give a readable error; and every page loads with the network limited to 127.0.0.1
(a Playwright route aborts and records anything else). Screenshots are written to tests/artifacts/
(git-ignored); the tests print their paths.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import _free_port, load_photo
from srgan.core.checkpoint import save_generator
from test_serving import _generator

CHROMIUM = "/usr/bin/chromium"  # Debian's package; `playwright install` would download a browser from outside
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 120_000  # an upscale on a loaded 2-core machine can take a while

PAGE_TOKEN = "page-" + os.urandom(8).hex()

pytestmark = pytest.mark.slow


class Endpoint:
    def __init__(self, url: str, default: Path, other: Path) -> None:
        self.url, self.default, self.other = url, default, other


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tmp_path_factory):
    """One Serve application for the module: a default model and one more on the allow-list."""
    from ray import serve

    from srgan.distributed.serving import application, build_app

    folder = tmp_path_factory.mktemp("web-models")
    default = save_generator(folder / "web-default", _generator(seed=5))
    other = save_generator(folder / "web-other", _generator(seed=6))
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": str(default), "allowed_models": [str(other)], "num_cpus": 0.25, "refresh_interval_s": 0,
                             "batch_wait_timeout_s": 0.0}), name="web", route_prefix="/")
        # The same page behind a bearer token (SRGAN_API_TOKEN), as a second application on the same port.
        serve.run(application({"model": str(default), "num_cpus": 0.25, "refresh_interval_s": 0, "batch_wait_timeout_s": 0.0},
                              api_token=PAGE_TOKEN), name="web-token", route_prefix="/secure")
        yield Endpoint(f"http://127.0.0.1:{port}", default, other)
    finally:
        serve.shutdown()  # frees the replica's CPUs for the tests that share the cluster


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


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


@pytest.fixture()
def offline(browser):
    page = OfflinePage(browser)
    yield page
    page.context.close()


def _photo_file(folder: Path, name: str = "chelsea.png", size: tuple[int, int] = (120, 80)) -> Path:
    """A crop of a real photo (scikit-image's cat), width x height, as a PNG file."""
    width, height = size
    path = folder / f"cat_{width}x{height}.png"
    Image.fromarray(np.ascontiguousarray(load_photo(name)[40 : 40 + height, 100 : 100 + width])).save(path)
    return path


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _wait_for_result(page) -> None:
    page.wait_for_selector("#result:not([hidden])")


def _natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def _models(endpoint: Endpoint) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{endpoint.url}/v1/models", timeout=60).json()["models"]}


def test_upload_shows_before_and_after_at_4x_and_downloads_it(endpoint, offline, tmp_path):
    page = offline.page
    photo = _photo_file(tmp_path)
    page.goto(f"{endpoint.url}/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#file", str(photo))
    _wait_for_result(page)

    width, height = Image.open(photo).size
    assert _natural_size(page, "#before") == (width, height)
    assert _natural_size(page, "#after") == (4 * width, 4 * height)
    # Both are drawn at the same on-screen size (the comparison lines up), and zoom changes it.
    boxes = [page.locator(s).bounding_box() for s in ("#before", "#after")]
    assert (boxes[0]["width"], boxes[0]["height"]) == (boxes[1]["width"], boxes[1]["height"]) and boxes[0]["width"] > 0
    _screenshot(page, "web_page_result.png")
    page.eval_on_selector("#zoom", "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
    assert page.locator("#after").bounding_box()["width"] == pytest.approx(8 * width, abs=1)

    default = _models(endpoint)[str(endpoint.default)]
    assert page.text_content("#info-input") == f"{width}x{height}"
    assert page.text_content("#info-output") == f"{4 * width}x{4 * height}"
    assert page.text_content("#info-model") == f"{default['name']} version {default['version']}"
    assert float(page.text_content("#info-time").split(" s")[0]) > 0

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "cat_120x80_x4.png" and Image.open(saved).size == (4 * width, 4 * height)
    assert offline.foreign == []


def test_dropped_image_goes_to_the_model_picked(endpoint, offline, tmp_path):
    page = offline.page
    page.goto(f"{endpoint.url}/")
    page.wait_for_selector("#model option:nth-child(2)", state="attached")
    other = _models(endpoint)[str(endpoint.other)]
    page.select_option("#model", str(endpoint.other))
    photo = _photo_file(tmp_path, "astronaut.png", (64, 48))
    dropped = page.evaluate_handle(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            return transfer;
        }""",
        [base64.b64encode(photo.read_bytes()).decode(), photo.name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    _wait_for_result(page)
    assert page.text_content("#info-model") == f"{other['name']} version {other['version']}"
    assert _natural_size(page, "#after") == (256, 192)
    assert offline.foreign == []


def test_a_text_file_gives_a_readable_error_not_a_broken_image(endpoint, offline, tmp_path):
    page = offline.page
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n" * 20)
    page.goto(f"{endpoint.url}/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("Error 415 (not a supported image): ") and "{" not in message, message
    assert page.is_hidden("#result")  # no image element on screen, broken or stale
    _screenshot(page, "web_page_error.png")
    assert offline.foreign == []


def test_page_and_docs_work_with_the_network_limited_to_127_0_0_1(endpoint, offline):
    page = offline.page
    page.goto(f"{endpoint.url}/")
    page.wait_for_selector("#model option", state="attached")
    assert page.locator("#model option").count() == 2 and page.is_hidden("#error")

    page.goto(f"{endpoint.url}/docs")
    page.locator(".opblock-summary-path", has_text="/v1/upscale").wait_for()  # Swagger UI rendered the API
    assert page.locator(".opblock-summary-path", has_text="/v1/models").count() == 1
    _screenshot(page, "web_docs.png")
    assert offline.foreign == []

    # The guard itself works: a request to another host is recorded and fails.
    failed = page.evaluate("() => fetch('http://example.com/x').then(() => false, () => true)")
    assert failed and offline.foreign == ["http://example.com/x"]


def test_page_asks_for_the_token_when_the_api_answers_401_and_sends_it(endpoint, offline, tmp_path):
    page = offline.page
    sent = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("authorization"))))
    page.goto(f"{endpoint.url}/secure/")  # the page itself is open
    page.wait_for_selector("#auth:not([hidden])")  # v1/models answered 401: the page asks
    assert page.is_hidden("#result") and page.locator("#model option").count() == 0
    page.fill("#token", "wrong-token")
    page.click("#token-save")
    page.wait_for_selector("#auth:not([hidden])")  # refused again, and not kept
    assert page.evaluate("sessionStorage.getItem('srgan-api-token')") is None
    page.fill("#token", PAGE_TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#model option", state="attached")  # the models load with the token
    assert page.evaluate("sessionStorage.getItem('srgan-api-token')") == PAGE_TOKEN  # this tab only
    assert page.evaluate("localStorage.length") == 0
    page.set_input_files("#file", str(_photo_file(tmp_path, size=(40, 30))))
    _wait_for_result(page)
    assert _natural_size(page, "#after") == (160, 120)
    _screenshot(page, "web_page_token.png")
    upscales = [auth for url, auth in sent if url.endswith("/secure/v1/upscale")]
    assert upscales == [f"Bearer {PAGE_TOKEN}"], upscales
    assert not [url for url, auth in sent if "/static/" in url and auth], "the token goes to the API only"
    assert offline.foreign == []
