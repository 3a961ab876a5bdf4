"""torchvision's ImageNet weights, as torchvision users expect them (srgan.io.weights): taken from the
torch cache (TORCH_HOME), else downloaded once per node with torchvision's hash check, else one line
that names both fixes. Nothing here downloads from the internet: the cache tests and the failure test
route HTTPS through a closed port on 127.0.0.1, and the download tests use a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time

import pytest
import torch
from torchvision.models import vgg19

from srgan.core.losses import LossConfig, build_content_loss
from srgan.errors import VGGWeightsNotFoundError, WeightsNotFoundError
from srgan.io import weights
from srgan.io.storage import fetch_weights_file

VGG19_FILE = "vgg19-dcbb9e9d.pth"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def _vgg19_head() -> dict[str, torch.Tensor]:
    """The entries of a torchvision vgg19 state dict up to relu2_2 (features.0..8): right keys and shapes
    (from a meta-device vgg19: nothing allocated), seeded random values. The loader needs no more."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg19().state_dict().items() if k.startswith("features.") and int(k.split(".")[1]) <= 8}
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in shapes.items()}


def test_cached_file_is_used_as_it_is(torch_home, no_network):
    """A state dict at torchvision's cache path serves the default, 'imagenet', with no network."""
    state = _vgg19_head()
    cache = torch_home / "hub" / "checkpoints" / VGG19_FILE
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    assert weights.ensure_vgg19_cached() == cache
    assert weights.check_vgg19_weights("imagenet") == str(cache) == weights.check_vgg19_weights(None)
    assert LossConfig().vgg_weights == "imagenet"
    # What a Ray Train worker runs (srgan/distributed/trainer.py), unchanged.
    loss = build_content_loss(LossConfig(content_layer="relu2_2"), vgg_weights=fetch_weights_file(LossConfig().vgg_weights))
    assert torch.equal(loss.features[0].weight, state["features.0.weight"])
    assert fetch_weights_file(None) == str(cache)
    assert sorted(p.name for p in cache.parent.iterdir()) == [VGG19_FILE]  # no lock taken, nothing written


def test_download_failure_is_one_line_that_names_both_fixes(torch_home, no_network):
    """No cache and no way to download (a refused connection, as on a machine without network)."""
    with pytest.raises(VGGWeightsNotFoundError) as err:
        fetch_weights_file("imagenet")
    message = str(err.value)
    checkpoints = torch_home / "hub" / "checkpoints"
    assert "\n" not in message
    assert message.startswith(f"VGG19 ImageNet weights not found in torchvision's cache ({checkpoints / VGG19_FILE})")
    assert f"the download from https://download.pytorch.org/models/{VGG19_FILE} failed (" in message
    assert f"put '{VGG19_FILE}' in {checkpoints}" in message and "TORCH_HOME" in message  # fix 1: the cache
    assert "--vgg-weights PATH|URI" in message  # fix 2: an explicit file
    assert isinstance(err.value, WeightsNotFoundError)
    assert not (checkpoints / VGG19_FILE).exists()
    assert not list(checkpoints.glob("*.partial"))  # torch.hub removes its partial file
    with pytest.raises(VGGWeightsNotFoundError, match="the download from"):  # the driver's check, before Ray starts
        weights.check_vgg19_weights(None)
    # Explicit paths and 'random' never touch the cache or the network.
    assert weights.check_vgg19_weights("random").startswith("random")
    with pytest.raises(VGGWeightsNotFoundError, match="VGG19 weights not found at /no/such.pth"):
        weights.check_vgg19_weights("/no/such.pth")


class _WeightsServer:
    """A real HTTP server on 127.0.0.1 that serves one file, counts GETs, and answers slowly enough
    that concurrent callers without a lock would all be downloading at once."""

    def __init__(self, payload: bytes, *, delay_s: float) -> None:
        self.payload, self.delay_s, self.gets = payload, delay_s, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.gets += 1
                time.sleep(server.delay_s)
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                self.wfile.write(server.payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_file():
    """A small state dict and its torchvision-style name: <name>-<first 8 hex digits of its SHA-256>.pth."""
    buffer = io.BytesIO()
    torch.save({"features.0.weight": torch.arange(12.0).view(1, 3, 2, 2)}, buffer)
    payload = buffer.getvalue()
    return payload, f"tiny-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


@pytest.fixture
def local_only(monkeypatch, fresh_urllib_opener):
    """No proxy: the local server is reached directly."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_concurrent_workers_on_a_node_download_once(torch_home, local_only, weights_file):
    """Four workers ask at the same moment: one download (the lock), and every one gets the whole file."""
    payload, name = weights_file
    server = _WeightsServer(payload, delay_s=0.5)
    start = threading.Barrier(4)
    results: list = []

    def worker():
        start.wait()
        try:
            results.append(weights.ensure_cached(f"{server.url}/{name}", what="test weights", other_fix="pass a path"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.close()
    cache = torch_home / "hub" / "checkpoints" / name
    assert results == [cache] * 4
    assert server.gets == 1
    assert cache.read_bytes() == payload
    assert torch.equal(torch.load(cache, weights_only=True)["features.0.weight"], torch.arange(12.0).view(1, 3, 2, 2))
    assert not list(cache.parent.glob("*.partial"))


def test_a_download_with_the_wrong_hash_is_refused(torch_home, local_only, weights_file):
    """torchvision's hash check is on: a file whose SHA-256 does not start with its name's digits is not cached."""
    payload, _ = weights_file
    server = _WeightsServer(payload, delay_s=0)
    try:
        with pytest.raises(WeightsNotFoundError, match="invalid hash value") as err:
            weights.ensure_cached(f"{server.url}/tiny-00000000.pth", what="test weights", other_fix="pass a path")
    finally:
        server.close()
    assert "\n" not in str(err.value) and "or pass a path." in str(err.value)
    assert sorted(p.name for p in (torch_home / "hub" / "checkpoints").iterdir()) == ["tiny-00000000.pth.lock"]
