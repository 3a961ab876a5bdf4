"""The SRGAN step in plain PyTorch: alternating D/G updates, D frozen in the G step, DDP over gloo."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from conftest import load_photo
from srgan.core.checkpoint import state_fingerprint
from srgan.config import config_from_dict
from srgan.core.engine import make_optimizer, srgan_step, validate
from srgan.core.losses import VGGContentLoss
from srgan.core.models import build_discriminator, build_generator
from srgan.core.training_state import Nets, load_training_checkpoint, save_training_checkpoint

CFG = {
    "model": {"num_blocks": 1, "num_features": 8, "bicubic_skip": True},
    "discriminator": {"base_features": 8, "dense_features": 16},
    "loss": {"content_layer": "relu2_2"},
    "data": {"crop_size": 32},
    "train": {"phase": "srgan", "init_from": "unused-here"},
}


def _crops(n: int = 4, size: int = 32, offset: int = 0) -> torch.Tensor:
    gt = torch.from_numpy(load_photo("astronaut.png").copy()).permute(2, 0, 1)
    return torch.stack([gt[:, 100 + 40 * i + offset : 100 + 40 * i + offset + size, 200 : 200 + size] for i in range(n)])


def _models(cfg):
    torch.manual_seed(0)
    net_g, net_d = build_generator(cfg.model), build_discriminator(cfg.discriminator)
    content = VGGContentLoss(layer=cfg.loss.content_layer, state_dict=None)
    return net_g, net_d, make_optimizer(net_g, cfg.optim), make_optimizer(net_d, cfg.optim), content


def test_srgan_step_updates_both_and_freezes_d_in_the_g_step():
    cfg = config_from_dict(CFG)
    net_g, net_d, opt_g, opt_d, content = _models(cfg)
    g0, d0 = state_fingerprint(net_g), state_fingerprint(net_d)
    d_grads: dict[str, torch.Tensor] = {}
    # Record D's gradients at the end of each backward; the G step must add none.
    hooks = [p.register_post_accumulate_grad_hook(lambda t, n=n: d_grads.__setitem__(n, t.grad.clone())) for n, p in net_d.named_parameters()]
    out = srgan_step(net_g, net_d, opt_g, opt_d, _crops(), content_loss=content, config=cfg.step)
    for h in hooks:
        h.remove()
    # Detached device tensors (read by the caller at log steps only), not floats synced every step.
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in out.values())
    out = {k: float(v) for k, v in out.items()}
    assert set(out) == {"loss_g", "loss_g_content", "loss_g_adversarial", "loss_d", "d_real", "d_fake"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert 0 < out["d_real"] < 1 and 0 < out["d_fake"] < 1
    assert out["loss_g"] == pytest.approx(out["loss_g_content"] + 1e-3 * out["loss_g_adversarial"], rel=1e-5)
    assert state_fingerprint(net_g) != g0 and state_fingerprint(net_d) != d0
    # D's .grad still holds exactly the D step's gradients (the G step did not accumulate into it).
    assert all(torch.equal(p.grad, d_grads[n]) for n, p in net_d.named_parameters())
    assert all(p.requires_grad for p in net_d.parameters())  # unfrozen again for the next D step
    assert not any(p.requires_grad for p in content.parameters())


def test_discriminator_learns_to_separate_real_from_generated():
    """srgan_step's D update, against a G held fixed (its optimiser has lr 0): D must end up telling
    real from generated crops by a wide margin.

    This holds by construction, not by luck: a fixed G makes D's task stationary (D converges within
    about 10 steps for every seed tried), the margin is averaged over the last 10 of 30 steps against a
    wide threshold, and an untrained D sits at chance (d_real ~ d_fake ~ 0.5, loss_d ~ 2 ln 2).
    Without the D step in srgan_step, D stays at chance and the test fails."""
    cfg = config_from_dict({**CFG, "optim": {"lr": 1e-3}})
    net_g, net_d, _, opt_d, content = _models(cfg)
    frozen_g = torch.optim.Adam(net_g.parameters(), lr=0.0)  # G's step runs but moves nothing
    g0 = [p.detach().clone() for p in net_g.parameters()]
    outs = [{k: float(v) for k, v in srgan_step(net_g, net_d, frozen_g, opt_d, _crops(offset=i % 3), content_loss=content, config=cfg.step).items()}
            for i in range(30)]
    assert all(torch.equal(p, q) for p, q in zip(net_g.parameters(), g0))  # (BN statistics still move)
    tail = outs[-10:]
    mean = lambda key: sum(o[key] for o in tail) / len(tail)  # noqa: E731
    assert mean("d_real") - mean("d_fake") > 0.5, tail
    assert mean("loss_d") < 0.5 * outs[0]["loss_d"], (outs[0], tail)


def test_validate_reports_the_vgg_distance(datasets_dir):
    cfg = config_from_dict(CFG)
    net_g, _, _, _, content = _models(cfg)
    result = validate(net_g, str(datasets_dir / "Set5"), scale=4, use_degrade=False, with_bicubic=False, max_images=2, content_loss=content)
    assert result.content_distance is not None and result.content_distance > 0
    plain = validate(net_g, str(datasets_dir / "Set5"), scale=4, use_degrade=False, with_bicubic=False, max_images=2)
    assert plain.content_distance is None and plain.score.psnr_y == result.score.psnr_y


def test_srgan_training_checkpoint_holds_d_and_its_optimiser(tmp_path):
    cfg = config_from_dict(CFG)
    net_g, net_d, opt_g, opt_d, content = _models(cfg)
    srgan_step(net_g, net_d, opt_g, opt_d, _crops(), content_loss=content, config=cfg.step)
    save_training_checkpoint(tmp_path, step=1, nets=Nets(net_g, opt_g, None, net_d, opt_d), config=cfg.to_dict(), run_id="r")
    torch.manual_seed(99)
    g2, d2 = build_generator(cfg.model), build_discriminator(cfg.discriminator)
    nets2 = Nets(g2, make_optimizer(g2, cfg.optim), None, d2, make_optimizer(d2, cfg.optim))
    assert load_training_checkpoint(tmp_path, nets=nets2, map_location="cpu") == 1
    assert state_fingerprint(d2) == state_fingerprint(net_d) and state_fingerprint(g2) == state_fingerprint(net_g)
    assert nets2.opt_d.state_dict()["state"][0]["step"] == opt_d.state_dict()["state"][0]["step"]
    # An SRResNet-phase checkpoint cannot silently resume an SRGAN run (no D in it).
    save_training_checkpoint(tmp_path / "mse", step=1, nets=Nets(net_g, opt_g), config=cfg.to_dict(), run_id="r")
    with pytest.raises(RuntimeError, match="no discriminator"):
        load_training_checkpoint(tmp_path / "mse", nets=nets2, map_location="cpu")


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = config_from_dict(CFG)
        net_g, net_d, _, _, content = _models(cfg)  # same seed: identical start on both ranks
        g0, d0 = state_fingerprint(net_g), state_fingerprint(net_d)
        model_g, model_d = DDP(net_g), DDP(net_d)  # find_unused_parameters=False, as Ray's prepare_model
        opt_g, opt_d = make_optimizer(model_g, cfg.optim), make_optimizer(model_d, cfg.optim)
        for step in range(3):  # each rank sees different crops; DDP must keep the replicas identical
            srgan_step(model_g, model_d, opt_g, opt_d, _crops(n=2, offset=7 * rank + step), content_loss=content, config=cfg.step)
        # Parameters only: BN running statistics are per-rank buffers (DDP re-broadcasts rank 0's at
        # each wrapped forward, but the last forward updates them from each rank's own batch).
        params = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()]).numpy()  # noqa: E731  (by value)
        queue.put((rank, params(net_g), params(net_d), state_fingerprint(net_g) != g0, state_fingerprint(net_d) != d0))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned gloo processes
def test_srgan_step_under_ddp_keeps_replicas_identical():
    """Two gloo processes, two DDP models, three alternating steps: no unused-parameter or
    unfinished-reduction error, and both ranks end with bit-identical G and D."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=240) for _ in range(2)), key=lambda r: r[0])  # before join: a full pipe blocks the sender
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    (_, g_a, d_a, *changed_a), (_, g_b, d_b, *changed_b) = results
    assert changed_a == changed_b == [True, True]
    assert (g_a == g_b).all() and (d_a == d_b).all()
