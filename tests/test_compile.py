"""``train.compile``: torch.compile'd steps must train like eager ones. The same nets, batches and
optimiser settings, stepped side by side from identical weights: losses and weights agree within
float tolerance (compiled kernels may fuse and reorder float operations, so not bit for bit).

``aot_eager`` traces what inductor compiles (dynamo's graphs, AOT autograd's backward, the guards on
D's requires_grad in the SRGAN step) in seconds; the inductor test runs the real code generation on
the CPU and is slow (about 20 s of CPU for this tiny net)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import load_photo
from srgan.config import config_from_dict
from srgan.core.engine import compile_module, make_optimizer, srgan_step, srresnet_step, unwrap
from srgan.core.losses import VGGContentLoss
from srgan.core.models import build_discriminator, build_generator

CFG = {
    "model": {"num_blocks": 1, "num_features": 8, "bicubic_skip": True},
    "discriminator": {"base_features": 8, "dense_features": 16},
    "loss": {"content_layer": "relu2_2"},
    "data": {"crop_size": 32},
    "optim": {"lr": 1e-3},
    "train": {"phase": "srgan", "init_from": "unused-here"},
}


def _crops(step: int, n: int = 2, size: int = 32) -> torch.Tensor:
    gt = torch.from_numpy(load_photo("astronaut.png").copy()).permute(2, 0, 1)
    return torch.stack([gt[:, 90 + 40 * i + 5 * step : 90 + 40 * i + 5 * step + size, 200 : 200 + size] for i in range(n)])


def _assert_close_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_srresnet_steps_match_eager(backend):
    # Inductor compiles the paper's generator (no bicubic skip): the skip's resize tables are built with
    # a data-dependent mask, a graph break that would make inductor generate and build C++ for five
    # graphs instead of two (aot_eager still steps through those breaks).
    model = {**CFG["model"], "bicubic_skip": backend != "inductor"}
    cfg = config_from_dict({**{k: v for k, v in CFG.items() if k != "train"}, "model": model})
    torch.manual_seed(0)
    eager = build_generator(cfg.model)
    twin = copy.deepcopy(eager)
    compiled = compile_module(twin, backend=backend)
    assert unwrap(compiled) is twin  # checkpoints and the EMA see the plain module
    # Plain SGD: the update is linear in the gradient, so compiled kernels' float reordering moves the
    # weights by about as much as it moves the gradients. (Adam's first steps are lr * sign(g) for
    # small g: a last-bit change of a near-zero gradient would move a weight by up to 2 * lr.)
    opt_e, opt_c = torch.optim.SGD(eager.parameters(), lr=1e-2), torch.optim.SGD(twin.parameters(), lr=1e-2)
    for step in range(3):
        loss_e = srresnet_step(eager, opt_e, _crops(step), config=cfg.step)["loss"]
        loss_c = srresnet_step(compiled, opt_c, _crops(step), config=cfg.step)["loss"]
        assert torch.allclose(loss_c, loss_e, rtol=1e-4), (step, float(loss_c), float(loss_e))
    _assert_close_params(eager, twin)
    assert any(not torch.equal(p, q) for p, q in zip(eager.parameters(), build_generator(cfg.model).parameters()))  # it did train


@pytest.mark.slow  # dynamo traces G, D (two requires_grad variants) and the VGG loss: about a minute here
def test_compiled_srgan_steps_match_eager():
    """G and D compiled; D frozen for the G step (a requires_grad guard: a second graph, not a wrong one)."""
    cfg = config_from_dict(CFG)
    torch.manual_seed(0)
    nets = [build_generator(cfg.model), build_discriminator(cfg.discriminator)]
    twins = copy.deepcopy(nets)
    content = VGGContentLoss(layer=cfg.loss.content_layer, state_dict=None)
    g_c, d_c = (compile_module(n, backend="aot_eager") for n in twins)
    opts = [make_optimizer(n, cfg.optim) for n in nets + twins]
    for step in range(3):
        out_e = srgan_step(nets[0], nets[1], opts[0], opts[1], _crops(step), content_loss=content, config=cfg.step)
        out_c = srgan_step(g_c, d_c, opts[2], opts[3], _crops(step), content_loss=content, config=cfg.step)
        for key in out_e:
            assert torch.allclose(out_c[key], out_e[key], rtol=1e-4, atol=1e-6), (step, key, float(out_c[key]), float(out_e[key]))
    for a, b in zip(nets, twins):
        _assert_close_params(a, b)
    assert all(p.requires_grad for p in twins[1].parameters())
