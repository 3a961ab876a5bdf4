"""The Serve endpoint over real HTTP on 127.0.0.1, on the session's Ray cluster.

``pipelines/serve.py`` runs as a subprocess (as a user runs it) against RAY_ADDRESS, with a small
checkpoint and fractional CPUs per replica; responses are compared with direct Upscaler calls in this
process. A second application follows a model registered in MLflow (SQLite) through its alias while
requests keep flowing. A real browser (headless Chromium) uses the web page at ``/``. The last test
interrupts the CLI and checks it stops cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from browser import natural_size, photo_file, screenshot, wait_for_result
from conftest import _free_port, load_photo, randomise_bn_statistics
from srgan.core.checkpoint import save_generator
from srgan.core.images import decode_image, encode_image
from srgan.core.inference import Upscaler, UpscalerOptions, weights_digest
from srgan.core.models import GeneratorConfig, build_generator

LIMIT = 20 * 1024 * 1024  # the default body limit


# ------------------------------------------------------------------------------------------ helpers


def _generator(seed: int):
    """A small generator with non-trivial weights and BN statistics (so its output depends on them)."""
    torch.manual_seed(seed)
    net = build_generator(GeneratorConfig(num_blocks=2, num_features=16))
    return randomise_bn_statistics(net)


def _encode(arr: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    """Decoded response/reference bytes as uint8-scale integers (16-bit scaled to 8)."""
    img = decode_image(data)
    planes = img.rgb if img.alpha is None else torch.cat([img.rgb, img.alpha])
    return (planes * 255).round().to(torch.int32).numpy()


def _direct(upscaler: Upscaler, data: bytes, fmt: str = "png") -> bytes:
    return encode_image(upscaler.upscale_image(decode_image(data)), fmt)


def _assert_json_error(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body


def _wait_healthy(url: str, proc: subprocess.Popen, log_path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve.py exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the endpoint did not become healthy:\n{log_path.read_text()[-4000:]}")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_generator(tmp_path_factory.mktemp("serve-ckpt") / "small", _generator(seed=0))


@pytest.fixture(scope="module")
def reference(checkpoint) -> Upscaler:
    """The direct in-process call the endpoint must agree with (same tile size as the server)."""
    return Upscaler.from_checkpoint(checkpoint, options=UpscalerOptions(tile_size=256, device="cpu"))


@pytest.fixture(scope="module")
def other_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Two more generators with other weights, on the server's allow-list: {"a": path, "b": path}."""
    folder = tmp_path_factory.mktemp("serve-other")
    return {name: str(save_generator(folder / name, _generator(seed=seed))) for name, seed in (("a", 3), ("b", 4))}


@pytest.fixture(scope="module")
def server(ray_cluster, repo_root, checkpoint, other_checkpoints, tmp_path_factory):
    """``pipelines/serve.py`` on a free port of 127.0.0.1, with two more models allowed and an LRU of one
    of them per replica; yields (base URL, process, log path)."""
    allowed = [arg for path in other_checkpoints.values() for arg in ("--allow-model", path)]
    with serve_cli(repo_root, ["--model", str(checkpoint), "--num-cpus", "0.25", "--batch-wait-ms", "300",
                               "--refresh-interval", "0", *allowed, "--max-models-per-replica", "1"],
                   log_path=tmp_path_factory.mktemp("serve-log") / "serve.log", cwd=tmp_path_factory.mktemp("serve-cwd")) as running:
        yield running


@contextmanager
def serve_cli(repo_root: Path, args: list[str], *, log_path: Path, cwd: Path, env: dict[str, str] | None = None):
    """``pipelines/serve.py ARGS`` on a free port of 127.0.0.1 of the session cluster, once healthy;
    yields (base URL, process, log path). Afterwards the process is killed and Serve shut down."""
    port = _free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, str(repo_root / "pipelines" / "serve.py"), *args, "--port", str(port)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
        yield url, proc, log_path
    finally:
        from ray import serve

        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        serve.shutdown()  # frees the replicas' CPUs for the Ray Train tests that share the cluster


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server[0], timeout=120) as client:
        yield client


# ------------------------------------------------------------------------------------------ CLI errors (no Ray)


def test_default_model_without_registry_is_a_clear_error(cli, tmp_path):
    proc = cli("serve", cwd=tmp_path, unset=("MLFLOW_TRACKING_URI",))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load models:/srgan-generator@champion"), proc.stderr
    assert "pipelines/train.py" in lines[0] and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args,match", [
    (["--model", "/no/such/checkpoint"], "checkpoint /no/such/checkpoint does not exist"),
    (["--min-replicas", "3", "--max-replicas", "2"], "min_replicas <= max_replicas"),
    (["--allow-model", "/no/such/other"], "checkpoint /no/such/other does not exist"),
    (["--max-models-per-replica", "0"], "max_models_per_replica"),
    (["--runtime", "onnxruntime", "--gpu"], "onnxruntime runtime runs on the CPU"),
])
def test_bad_serve_flags_are_one_line_errors(cli, tmp_path, checkpoint, args, match):
    argv = ["--model", str(checkpoint), *args] if args[0] != "--model" else args
    proc = cli("serve", *argv, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------ the endpoint


def test_a_stopping_replica_counts_its_requests_every_200_ms(server):
    """Serve's default has a stopping replica sleep 2 s before its first count of in-flight requests,
    so every stop of an idle replica waited 2 s for nothing. The running deployment (as Serve's
    controller holds it) polls every DRAIN_POLL_S; in-flight requests still get Serve's 20 s."""
    from ray.serve.context import _get_global_client

    from srgan.distributed.serving import APP_NAME, DEPLOYMENT_NAME, DRAIN_POLL_S

    details = _get_global_client().get_serve_details()
    config = details["applications"][APP_NAME]["deployments"][DEPLOYMENT_NAME]["deployment_config"]
    assert config["graceful_shutdown_wait_loop_s"] == DRAIN_POLL_S == 0.2
    assert config["graceful_shutdown_timeout_s"] == 20


def test_health_and_models(http, checkpoint, reference, other_checkpoints):
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    default, *others = http.get("/v1/models").json()["models"]
    assert default["name"] == "small" and default["scale"] == 4 and default["default"] and default["loaded"]
    assert default["version"] == reference.version == weights_digest(_generator(seed=0))
    assert default["source"] == default["id"] == str(checkpoint)
    # Every allowed model is listed with its scale and version, loaded or not.
    assert [m["id"] for m in others] == list(other_checkpoints.values())
    for model, path in zip(others, other_checkpoints.values()):
        assert (model["name"], model["scale"], model["resolved"], model["default"]) == (Path(path).name, 4, path, False)
        assert model["version"] == Upscaler.from_checkpoint(path).version != default["version"]
    assert "/v1/upscale" in http.get("/openapi.json").json()["paths"]


def test_docs_and_page_need_nothing_from_outside(http):
    """/docs loads Swagger UI from this server (fastapi-offline's files), and the page from package data."""
    docs = http.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert {a.rsplit("/", 1)[1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}, assets
    for asset in assets:
        assert asset.startswith("/"), asset  # this server, not a CDN
        assert http.get(asset).status_code == 200, asset
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert http.get(f"/{asset}").status_code == 200, asset
    assert "web page" in http.get("/openapi.json").json()["info"]["description"].lower()


@pytest.mark.parametrize("photo,crop", [("chelsea.png", (slice(60, 160), slice(0, 300))), ("coffee.png", (slice(100, 164), slice(200, 296)))],
                         ids=["tiled-300x100", "batched-96x64"])
def test_real_photo_comes_back_4x_equal_to_direct_call(http, reference, photo, crop):
    """Wider than batch_max_side (256): tiled on its own; smaller: through the batch queue."""
    arr = np.ascontiguousarray(load_photo(photo)[crop])
    data = _encode(arr)
    resp = http.post("/v1/upscale", content=data, headers={"Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["content-type"] == "image/png"
    height, width = arr.shape[:2]
    assert resp.headers["x-input-size"] == f"{width}x{height}"
    assert resp.headers["x-output-size"] == f"{4 * width}x{4 * height}"
    assert resp.headers["x-model-version"] == reference.version
    got, want = _pixels(resp.content), _pixels(_direct(reference, data))
    assert got.shape == (3, 4 * height, 4 * width)
    assert np.abs(got - want).max() <= 1
    # The same bytes as a multipart/form-data upload give the same image.
    multipart = http.post("/v1/upscale", files={"file": ("photo.png", data, "image/png")})
    assert multipart.status_code == 200 and np.abs(_pixels(multipart.content) - got).max() == 0


def test_output_format_and_quality(http):
    data = _encode(load_photo("astronaut.png")[:48, :40])  # PNG in
    assert http.post("/v1/upscale", content=data).headers["content-type"] == "image/png"  # default: the input's
    jpeg_in = _encode(load_photo("astronaut.png")[:48, :40], "JPEG", quality=95)
    assert http.post("/v1/upscale", content=jpeg_in).headers["content-type"] == "image/jpeg"
    sizes = {}
    for quality in (10, 95):
        resp = http.post("/v1/upscale", params={"format": "webp", "quality": quality}, content=data)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(resp.content)).size == (160, 192)
        sizes[quality] = len(resp.content)
    assert sizes[10] < sizes[95]


def test_rgba_greyscale_and_16bit_keep_their_mode(http, reference):
    rgb = load_photo("astronaut.png")[:40, :48]
    alpha = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))
    rgba = np.dstack([rgb, alpha])
    grey = load_photo("camera.png")[:40, :48]
    grey16 = (grey.astype(np.uint16) * 257 + 7).astype(np.uint16)
    cases = {
        "RGBA": _encode(rgba),
        "L": _encode(grey),
        "I;16": _encode(grey16),
    }
    for mode, data in cases.items():
        resp = http.post("/v1/upscale", content=data)
        assert resp.status_code == 200, (mode, resp.text[:300])
        out = Image.open(io.BytesIO(resp.content))
        assert out.size == (192, 160)
        assert out.mode == mode or (mode == "I;16" and out.mode.startswith("I")), (mode, out.mode)
        assert decode_image(resp.content).bit_depth == (16 if mode == "I;16" else 8)
        assert np.abs(_pixels(resp.content) - _pixels(_direct(reference, data))).max() <= 1


def _post_concurrently(url: str, bodies: list[bytes], params: list[dict] | None = None) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/upscale", content=b, params=p)
                                          for b, p in zip(bodies, params or [{}] * len(bodies))))

    return asyncio.run(run())


def test_concurrent_small_requests_are_batched_by_size(server, http, reference):
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    same = [_encode(np.ascontiguousarray(load_photo(p)[10 * i : 10 * i + 32, :32])) for i, p in enumerate(photos * 2)]
    before = http.get("/v1/models").json()["replica_stats"]
    responses = _post_concurrently(server[0], same)
    assert all(r.status_code == 200 for r in responses)
    batch_sizes = [int(r.headers["x-batch-size"]) for r in responses]
    after = http.get("/v1/models").json()["replica_stats"]
    assert max(batch_sizes) >= 2, batch_sizes  # requests shared forward passes
    assert after["batched_images"] - before["batched_images"] == 8
    assert after["batches"] - before["batches"] < 8 and after["largest_batch"] >= 2, (before, after)
    for data, resp in zip(same, responses):  # every caller got its own image back
        assert np.abs(_pixels(resp.content) - _pixels(_direct(reference, data))).max() <= 1

    # Two sizes at once: only same-size images share a pass.
    mixed = same[:4] + [_encode(np.ascontiguousarray(load_photo(p)[:24, :40])) for p in photos]
    responses = _post_concurrently(server[0], mixed)
    assert all(r.status_code == 200 for r in responses)
    assert all(int(r.headers["x-batch-size"]) <= 4 for r in responses)
    assert [r.headers["x-output-size"] for r in responses] == ["128x128"] * 4 + ["160x96"] * 4


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image, with a tiny data stream (a decompression bomb's shape)."""
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _corrupt_png() -> bytes:
    data = bytearray(_encode(load_photo("coffee.png")[:32, :32]))
    data[len(data) // 2] ^= 0xFF  # inside the image data: the CRC no longer matches
    return bytes(data)


def _gif() -> bytes:
    return _encode(load_photo("camera.png")[:16, :16], "GIF")


def _chunked(total: int):
    block = b"\0" * (1 << 20)
    for _ in range(total // len(block) + 1):
        yield block


def _bad_requests() -> dict[str, tuple[dict, int]]:
    """name -> (httpx request arguments, expected status)."""
    return {
        "body over 20 MB": (dict(content=b"\0" * (LIMIT + 1)), 413),
        "chunked body over 20 MB": (dict(content=_chunked(LIMIT + 1)), 413),
        "over 16 megapixels": (dict(content=_encode(np.zeros((3300, 5000), np.uint8))), 413),
        "decompression bomb": (dict(content=_bomb_png(100_000, 100_000)), 413),
        "empty body": (dict(content=b""), 400),
        "corrupt PNG": (dict(content=_corrupt_png()), 400),
        "truncated JPEG": (dict(content=_encode(load_photo("coffee.png"), "JPEG")[:4000]), 400),
        "not an image": (dict(content=b"hello, this is text\n" * 10), 415),
        "GIF": (dict(content=_gif()), 415),
        "multipart without file": (dict(files={"image": ("a.png", b"x")}), 400),
        "bad format": (dict(content=b"x", params={"format": "tiff"}), 400),
        "quality not a number": (dict(content=b"x", params={"quality": "high"}), 400),
        "quality out of range": (dict(content=b"x", params={"quality": 0}), 400),
    }


def test_bad_input_gets_4xx_json_and_the_server_keeps_serving(http):
    for name, (kwargs, status) in _bad_requests().items():
        resp = http.post("/v1/upscale", **kwargs)
        try:
            _assert_json_error(resp, status)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    _assert_json_error(http.get("/no/such/route"), 404)
    _assert_json_error(http.get("/v1/upscale"), 405)
    ok = http.post("/v1/upscale", content=_encode(load_photo("coffee.png")[:20, :30]))
    assert ok.status_code == 200 and ok.headers["x-output-size"] == "120x80"


# ------------------------------------------------------------------------------------------ several models

MODEL_HEADER = "serve_multiplexed_model_id"  # Serve's proxy routes by it


def _loaded_models(http) -> tuple[set[str], dict]:
    body = http.get("/v1/models").json()
    return {m["id"] for m in body["models"] if m["loaded"]}, body["replica_stats"]


def test_models_off_the_allow_list_are_404_json(http, tmp_path):
    data = _encode(load_photo("coffee.png")[:20, :30])
    elsewhere = str(save_generator(tmp_path / "not-allowed", _generator(seed=9)))  # exists, but not offered
    for ref in (elsewhere, "models:/srgan-generator@champion", "/etc/passwd"):
        _assert_json_error(http.post("/v1/upscale", params={"model": ref}, content=data), 404)
        _assert_json_error(http.post("/v1/upscale", headers={MODEL_HEADER: ref}, content=data), 404)
    loaded, _ = _loaded_models(http)
    assert elsewhere not in loaded


def test_header_and_query_naming_different_models_is_a_400(http, other_checkpoints):
    a, b = other_checkpoints.values()
    resp = http.post("/v1/upscale", params={"model": a}, headers={MODEL_HEADER: b}, content=_encode(load_photo("coffee.png")[:20, :30]))
    _assert_json_error(resp, 400)
    _assert_json_error(http.post("/v1/upscale", params={"model": "x" * 1001}, content=b"x"), 400)


def test_one_deployment_answers_several_models_and_its_lru_evicts_and_reloads(server, http, checkpoint, reference, other_checkpoints):
    """max_models_per_replica is 1: a, then b (a evicted), then a again (reloaded); the default stays."""
    a, b = other_checkpoints.values()
    direct = {ref: Upscaler.from_checkpoint(ref, options=UpscalerOptions(tile_size=256, device="cpu")) for ref in (a, b)}
    data = _encode(np.ascontiguousarray(load_photo("chelsea.png")[:24, :32]))
    _, start = _loaded_models(http)

    def upscale(**kwargs) -> httpx.Response:
        resp = http.post("/v1/upscale", content=data, **kwargs)
        assert resp.status_code == 200, resp.text[:300]
        return resp

    steps = [(a, dict(params={"model": a})), (b, dict(headers={MODEL_HEADER: b})), (a, dict(headers={MODEL_HEADER: a}))]
    for i, (ref, how) in enumerate(steps, start=1):
        resp = upscale(**how)
        assert resp.headers["x-model-version"] == direct[ref].version
        assert np.abs(_pixels(resp.content) - _pixels(_direct(direct[ref], data))).max() <= 1
        loaded, stats = _loaded_models(http)
        assert loaded == {str(checkpoint), ref}, loaded  # the default, and the one model the LRU holds
        assert stats["model_loads"] - start["model_loads"] == i  # each step loaded its model (a: twice)
        assert stats["model_evictions"] - start["model_evictions"] == i - 1
    default = upscale()
    assert default.headers["x-model-version"] == reference.version
    assert np.abs(_pixels(default.content) - _pixels(_direct(reference, data))).max() <= 1

    # Same-size requests for two models at once share forward passes only with their own model.
    mixed = _post_concurrently(server[0], [data] * 6, params=[{}, {"model": a}] * 3)
    assert all(r.status_code == 200 for r in mixed)
    for i, resp in enumerate(mixed):
        want = reference if i % 2 == 0 else direct[a]
        assert resp.headers["x-model-version"] == want.version and int(resp.headers["x-batch-size"]) <= 3
        assert np.abs(_pixels(resp.content) - _pixels(_direct(want, data))).max() <= 1


# ------------------------------------------------------------------------------------------ registry alias


def _register(db: str, checkpoint_dir, *, step: int, psnr: float) -> str:
    from mlflow.tracking import MlflowClient

    from srgan.tracking.registry import register_generator

    client = MlflowClient(db, registry_uri=db)
    exp = client.get_experiment_by_name("serve-test") or client.get_experiment(client.create_experiment("serve-test"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    reg = register_generator(db, run_id=run_id, checkpoint_dir=checkpoint_dir, step=step, name="srgan-generator",
                             metric_name="val_psnr_y", metric_value=psnr)
    assert reg.champion
    return reg.version


# ------------------------------------------------------------------------------------------ the web page, in a browser
# Headless Chromium (tests/browser.py) on this module's endpoint: it uploads a real photo (picked, and
# dropped), waits for the result, reads the images' natural sizes and downloads the output; a text file
# gives a readable error; every page loads with the network limited to 127.0.0.1. (The page behind a
# bearer token: tests/test_serving_limits.py.)


def _models_by_id(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=60).json()["models"]}


def test_page_upload_shows_before_and_after_at_4x_and_downloads_it(server, checkpoint, offline, tmp_path):
    url, page = server[0], offline.page
    photo = photo_file(tmp_path)
    page.goto(f"{url}/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#file", str(photo))
    wait_for_result(page)

    width, height = Image.open(photo).size
    assert natural_size(page, "#before") == (width, height)
    assert natural_size(page, "#after") == (4 * width, 4 * height)
    # Both are drawn at the same on-screen size (the comparison lines up), and zoom changes it.
    boxes = [page.locator(s).bounding_box() for s in ("#before", "#after")]
    assert (boxes[0]["width"], boxes[0]["height"]) == (boxes[1]["width"], boxes[1]["height"]) and boxes[0]["width"] > 0
    screenshot(page, "web_page_result.png")
    page.eval_on_selector("#zoom", "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
    assert page.locator("#after").bounding_box()["width"] == pytest.approx(8 * width, abs=1)

    default = _models_by_id(url)[str(checkpoint)]
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


def test_page_sends_a_dropped_image_to_the_model_picked(server, other_checkpoints, offline, tmp_path):
    url, page = server[0], offline.page
    page.goto(f"{url}/")
    page.wait_for_selector("#model option:nth-child(2)", state="attached")
    other = _models_by_id(url)[other_checkpoints["a"]]
    page.select_option("#model", other_checkpoints["a"])
    photo = photo_file(tmp_path, "astronaut.png", (64, 48))
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
    wait_for_result(page)
    assert page.text_content("#info-model") == f"{other['name']} version {other['version']}"
    assert natural_size(page, "#after") == (256, 192)
    assert offline.foreign == []


def test_page_shows_a_readable_error_for_a_text_file_not_a_broken_image(server, offline, tmp_path):
    url, page = server[0], offline.page
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n" * 20)
    page.goto(f"{url}/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("Error 415 (not a supported image): ") and "{" not in message, message
    assert page.is_hidden("#result")  # no image element on screen, broken or stale
    screenshot(page, "web_page_error.png")
    assert offline.foreign == []


def test_page_and_docs_work_with_the_network_limited_to_127_0_0_1(server, offline):
    url, page = server[0], offline.page
    page.goto(f"{url}/")
    page.wait_for_selector("#model option", state="attached")
    assert page.locator("#model option").count() == 3 and page.is_hidden("#error")  # the default and two allowed

    page.goto(f"{url}/docs")
    page.locator(".opblock-summary-path", has_text="/v1/upscale").wait_for()  # Swagger UI rendered the API
    assert page.locator(".opblock-summary-path", has_text="/v1/models").count() == 1
    screenshot(page, "web_docs.png")
    assert offline.foreign == []

    # The guard itself works: a request to another host is recorded and fails.
    failed = page.evaluate("() => fetch('http://example.com/x').then(() => false, () => true)")
    assert failed and offline.foreign == ["http://example.com/x"]


def test_model_from_registry_alias_and_update_without_downtime(server, cli, tmp_path, mlflow_db):
    from ray import serve

    from srgan.distributed.serving import build_app

    db = mlflow_db
    ckpt_v1 = save_generator(tmp_path / "v1", _generator(seed=1))
    ckpt_v2 = save_generator(tmp_path / "v2", _generator(seed=2))
    assert _register(db, ckpt_v1, step=1, psnr=20.0) == "1"

    # Unknown names in an existing store are a one-line error too.
    proc = cli("serve", "--model", "models:/nope@champion", "--tracking-uri", db, cwd=tmp_path)
    assert proc.returncode == 2 and "models:/nope@champion is not registered" in proc.stderr, proc.stderr

    serve.run(build_app({"model": "models:/srgan-generator@champion", "tracking_uri": db, "refresh_interval_s": 0.5,
                         "num_cpus": 0.1, "batch_wait_timeout_s": 0.0, "allowed_models": ["models:/srgan-generator/1"]}),
              name="registry", route_prefix="/registry")
    url = f"{server[0]}/registry"
    data = _encode(np.ascontiguousarray(load_photo("chelsea.png")[:40, :56]))
    direct = {v: Upscaler.from_checkpoint(c, options=UpscalerOptions(device="cpu")) for v, c in (("1", ckpt_v1), ("2", ckpt_v2))}
    with httpx.Client(base_url=url, timeout=120) as client:
        model, pinned = client.get("/v1/models").json()["models"]
        assert (model["name"], model["version"], model["source"], model["resolved"]) == (
            "srgan-generator", "1", "models:/srgan-generator@champion", "models:/srgan-generator/1")
        assert (pinned["id"], pinned["version"], pinned["scale"], pinned["loaded"]) == ("models:/srgan-generator/1", "1", 4, False)
        first = client.post("/v1/upscale", content=data)
        assert first.status_code == 200 and first.headers["x-model-version"] == "1"
        assert np.abs(_pixels(first.content) - _pixels(_direct(direct["1"], data))).max() <= 1

        # A better version moves the alias; requests keep succeeding while the replica switches.
        assert _register(db, ckpt_v2, step=2, psnr=25.0) == "2"
        versions, deadline = [], time.time() + 90
        while time.time() < deadline:
            resp = client.post("/v1/upscale", content=data)
            assert resp.status_code == 200, resp.text[:300]
            versions.append(resp.headers["x-model-version"])
            if versions[-1] == "2":
                break
        assert versions[-1] == "2" and versions == sorted(versions), versions
        assert np.abs(_pixels(resp.content) - _pixels(_direct(direct["2"], data))).max() <= 1
        assert np.abs(_pixels(resp.content) - _pixels(first.content)).max() > 1  # really other weights
        assert client.get("/v1/models").json()["models"][0]["resolved"] == "models:/srgan-generator/2"
        # Two registered versions from one deployment: the champion by default, version 1 when asked for.
        old = client.post("/v1/upscale", params={"model": "models:/srgan-generator/1"}, content=data)
        assert old.status_code == 200 and old.headers["x-model-version"] == "1", old.text[:300]
        assert np.abs(_pixels(old.content) - _pixels(first.content)).max() == 0
        assert client.post("/v1/upscale", content=data).headers["x-model-version"] == "2"
    serve.delete("registry")


# ------------------------------------------------------------------------------------------ shutdown


def test_cli_stops_cleanly_on_interrupt(server):
    url, proc, log_path = server
    proc.send_signal(signal.SIGINT)
    # Serve's shutdown (controller, proxy, replicas) can take minutes on a loaded 2-core machine.
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("serve.py did not stop within 300 s of SIGINT:\n" + log_path.read_text()[-3000:])
    assert code == 0, log_path.read_text()[-3000:]
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# ------------------------------------------------------------------------------------------ configuration (no Ray)


def test_serve_config_yaml_is_a_valid_serve_config_for_build_app(repo_root):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from srgan.distributed.serving import DEPLOYMENT_NAME, ModelConfig, ServeOptions, build_app

    raw = yaml.safe_load((repo_root / "infra" / "serve_config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)  # what `serve deploy` checks
    (app,) = config.applications
    assert app.import_path == "srgan.distributed.serving:build_app" and app.route_prefix == "/"
    build_app(app.args)  # the args are ServeOptions fields
    (deployment,) = app.deployments
    assert deployment.name == DEPLOYMENT_NAME
    assert deployment.autoscaling_config["min_replicas"] <= deployment.autoscaling_config["max_replicas"]
    assert deployment.max_ongoing_requests >= ServeOptions.from_args(app.args).max_batch_size
    assert ModelConfig.from_dict(deployment.user_config).model == "models:/srgan-generator@champion"
    options = ServeOptions.from_args(app.args)
    assert options.allowed_models == ("models:/srgan-generator-gan@champion",) and options.max_models_per_replica >= 1


def test_deployment_options_from_args():
    from srgan.distributed.serving import ServeOptions

    fixed = ServeOptions.from_args({"num_replicas": 3, "num_gpus": 1, "max_ongoing_requests": 16}).deployment_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1} and fixed["max_ongoing_requests"] == 16
    assert fixed["graceful_shutdown_wait_loop_s"] == 0.2  # not Serve's 2 s (see the test of the running deployment)
    auto = ServeOptions.from_args({"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3}).deployment_options()
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3}
    assert "num_replicas" not in auto and auto["user_config"]["model"] == "models:/srgan-generator@champion"
    with pytest.raises(ValueError, match="unknown args key"):
        ServeOptions.from_args({"replicas": 2})
    with pytest.raises(ValueError, match="not both"):
        ServeOptions.from_args({"num_replicas": 2, "max_replicas": 4})
