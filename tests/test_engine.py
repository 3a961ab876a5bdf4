"""The plain-torch training engine: no Ray involved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_photo
from srgan.config import config_from_dict
from srgan.core.degrade import degrade
from srgan.core.engine import (DeviceMeans, comparison_grid, cycle_batches, ema_update, lr_at, make_ema, make_optimizer, make_pair, srresnet_step,
                               start_early, validate)
from srgan.core.models import SRResNet
from srgan.core.training_state import Nets, load_training_checkpoint, save_training_checkpoint


def _crops(n: int = 4, size: int = 32) -> torch.Tensor:
    arr = load_photo("astronaut.png")
    gt = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return torch.stack([gt[:, 100 + 40 * i : 100 + 40 * i + size, 200 : 200 + size] for i in range(n)])


def test_make_pair_ranges_and_degradation():
    gt_u8 = _crops()
    lq, gt = make_pair(gt_u8, 4)
    assert lq.shape == (4, 3, 8, 8) and gt.shape == (4, 3, 32, 32)
    assert lq.min() >= 0 and lq.max() <= 1 and gt.min() >= -1 and gt.max() <= 1
    # The LR input is exactly the MATLAB uint8 degradation that made the evaluation sets.
    assert torch.equal((lq * 255).round().to(torch.uint8), degrade(gt_u8, 4))


def test_srresnet_step_learns():
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"num_blocks": 1, "num_features": 16, "bicubic_skip": True}, "optim": {"lr": 1e-3}, "data": {"crop_size": 32}})
    net = SRResNet(num_blocks=1, num_features=16, bicubic_skip=True)
    opt = make_optimizer(net, cfg.optim)
    batch = _crops()
    losses = [float(srresnet_step(net, opt, batch, config=cfg.step)["loss"]) for _ in range(30)]
    # Windows, not single steps: the mean of the last 5 against the first 5, on one fixed batch.
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_lr_schedule():
    cfg = config_from_dict({"optim": {"lr": 1e-4, "lr_decay_step": 100}}).optim
    assert lr_at(1, cfg) == 1e-4 and lr_at(100, cfg) == 1e-4 and lr_at(101, cfg) == pytest.approx(1e-5)
    assert lr_at(10**6, config_from_dict({}).optim) == 1e-4


def test_ema_update():
    net = SRResNet(num_blocks=1, num_features=4)
    ema = make_ema(net)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.rand(2, 3, 8, 8))  # moves the BN running statistics (and num_batches_tracked)
    ema_update(ema, net, decay=0.9)
    for b, e in zip(before, ema.parameters()):
        assert torch.allclose(e, b + 0.1, atol=1e-6)
    for e, b in zip(ema.buffers(), net.buffers()):  # buffers are copied, whatever their dtype
        assert torch.equal(e, b)
    assert not any(p.requires_grad for p in ema.parameters())


def test_training_checkpoint_roundtrip_restores_everything(tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"num_blocks": 1, "num_features": 8}, "data": {"crop_size": 32}, "train": {"ema_decay": 0.5}})
    net = SRResNet(num_blocks=1, num_features=8)
    opt = make_optimizer(net, cfg.optim)
    ema = make_ema(net)
    srresnet_step(net, opt, _crops(), config=cfg.step)
    ema_update(ema, net, 0.5)
    np.random.seed(3)
    save_training_checkpoint(tmp_path, step=7, nets=Nets(net, opt, ema), config=cfg.to_dict(), run_id="abc")
    expected_next = (torch.rand(3), np.random.rand(2))

    net2 = SRResNet(num_blocks=1, num_features=8)
    opt2 = make_optimizer(net2, cfg.optim)
    ema2 = make_ema(net2)
    torch.manual_seed(123)
    np.random.seed(123)
    step = load_training_checkpoint(tmp_path, nets=Nets(net2, opt2, ema2), map_location="cpu")
    assert step == 7
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), expected_next[0]) and np.array_equal(np.random.rand(2), expected_next[1])
    # The exported generator is the EMA, loadable on its own.
    from srgan.core.checkpoint import load_generator

    exported, info = load_generator(tmp_path)
    assert info.metadata["weights"] == "ema" and info.metadata["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), ema.state_dict().values()))


def test_validate_and_grid(datasets_dir):
    torch.manual_seed(0)
    net = SRResNet(num_blocks=1, num_features=8, bicubic_skip=True)
    net.train()
    result = validate(net, str(datasets_dir / "Set5"), scale=4, use_degrade=False, with_bicubic=True, max_images=2)
    assert net.training  # the caller's module is untouched
    assert len(result.score.images) == 2 and result.bicubic is not None
    assert result.bicubic.psnr_y == pytest.approx(sum([31.7842, 30.1815]) / 2, abs=0.01)  # baby, bird (see evaluate --verbose)
    grid = result.grid
    assert grid.dtype == np.uint8 and grid.shape[1] == 4 * 128 and grid.shape[0] == 2 * 128 and grid.shape[2] == 3


def test_comparison_grid_none_without_samples(datasets_dir):
    assert comparison_grid([], str(datasets_dir / "Set5"), scale=4, use_degrade=False) is None


def test_bf16_autocast_and_channels_last_step_runs_and_learns():
    """The bf16/channels_last options take the same code path on any device (CPU autocast here)."""
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"num_blocks": 1, "num_features": 16, "bicubic_skip": True}, "optim": {"lr": 1e-3},
                            "data": {"crop_size": 32}, "train": {"bf16": True, "channels_last": True}})
    net = SRResNet(num_blocks=1, num_features=16, bicubic_skip=True).to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg.optim)
    batch = _crops()
    losses = [float(srresnet_step(net, opt, batch, config=cfg.step)["loss"]) for _ in range(30)]
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_device_means_average_the_steps_losses_without_reading_them():
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"num_blocks": 1, "num_features": 8}, "data": {"crop_size": 32}})
    net = SRResNet(num_blocks=1, num_features=8)
    opt = make_optimizer(net, cfg.optim)
    means, seen = DeviceMeans(), []
    for _ in range(3):
        out = srresnet_step(net, opt, _crops(), config=cfg.step)
        assert isinstance(out["loss"], torch.Tensor) and out["loss"].ndim == 0 and not out["loss"].requires_grad
        means.add(out)
        seen.append(float(out["loss"]))
    assert means.keys == ["loss"] and means.count == 3 and means.sums().shape == (1,)
    assert float(means.sums()[0]) / means.count == pytest.approx(np.mean(seen), rel=1e-6)
    means.reset()
    with pytest.raises(RuntimeError, match="no values"):
        means.sums()


@pytest.mark.gpu
def test_steps_do_not_synchronise_with_the_host():
    """CUDA's sync debug mode raises on any device-to-host synchronisation: an SRResNet step, the EMA
    update and the loss sums must run without one (losses are read at log steps only)."""
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"num_blocks": 2, "num_features": 16}, "data": {"crop_size": 32}})
    net = SRResNet(num_blocks=2, num_features=16).cuda()
    opt, ema, means = make_optimizer(net, cfg.optim), make_ema(net), DeviceMeans()
    batch = _crops().cuda()
    srresnet_step(net, opt, batch, config=cfg.step)  # warm-up: lazy initialisations may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            means.add(srresnet_step(net, opt, batch, config=cfg.step))
            ema_update(ema, net, 0.999)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(float(means.sums()[0]))


def test_start_early_fetches_the_first_batch_while_the_caller_gets_on_and_keeps_order_and_errors():
    import threading

    fetched = threading.Event()

    def source():
        fetched.set()  # the slow start of a data pipeline
        yield from range(5)

    it = start_early(source())
    assert fetched.wait(timeout=10)  # fetching began before anyone asked for an item
    assert list(it) == [0, 1, 2, 3, 4]
    assert list(start_early(iter([]))) == []

    def broken():
        raise RuntimeError("the training dataset produced no batches")
        yield  # pragma: no cover - a generator

    it = start_early(broken())
    with pytest.raises(RuntimeError, match="produced no batches"):  # raised where the loop asks, not on the thread
        next(it)
    # As the training loop uses it: endless epochs, the first epoch's first batch fetched early.
    epochs = start_early(cycle_batches(lambda epoch: iter([f"e{epoch}b0", f"e{epoch}b1"])))
    assert [next(epochs) for _ in range(5)] == [(0, "e0b0"), (0, "e0b1"), (1, "e1b0"), (1, "e1b1"), (2, "e2b0")]
