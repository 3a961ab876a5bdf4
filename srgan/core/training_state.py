"""A training checkpoint's state in plain PyTorch: what one worker trains (:class:`Nets`) and the
weights-only file that lets a run resume exactly (step, G, D, both optimisers, EMA, RNG).

Beside it in the same directory sit the exported generator files (:mod:`srgan.core.checkpoint`),
which load on their own for evaluation and serving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srgan.core.checkpoint import save_generator
from srgan.core.engine import unwrap

__all__ = ["Nets", "TRAINING_STATE_FILE", "save_training_checkpoint", "load_training_checkpoint"]

TRAINING_STATE_FILE = "training_state.pt"


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Nets:
    """What one worker trains. ``net_d``/``opt_d`` exist in the srgan phase only."""

    net_g: torch.nn.Module
    opt_g: torch.optim.Optimizer
    ema: torch.nn.Module | None = None
    net_d: torch.nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None


def save_training_checkpoint(directory: Path, *, step: int, nets: Nets, config: dict[str, Any], run_id: str) -> None:
    """generator.safetensors + checkpoint.json (the exported weights: EMA if enabled, and the run's
    resolved ``config`` as a plain dict) + training state (G, D, both optimisers, EMA, RNG) in a
    weights-only torch file."""
    export = nets.ema if nets.ema is not None else unwrap(nets.net_g)
    phase = config.get("train", {}).get("phase", "srresnet")
    metadata = {"step": step, "phase": phase, "mlflow_run_id": run_id, "weights": "ema" if nets.ema is not None else "net_g"}
    save_generator(directory, export, config=config, metadata=metadata)
    state = {
        "step": step,
        "net_g": unwrap(nets.net_g).state_dict(),
        "optimizer": nets.opt_g.state_dict(),
        "ema": nets.ema.state_dict() if nets.ema is not None else None,
        "net_d": unwrap(nets.net_d).state_dict() if nets.net_d is not None else None,
        "optimizer_d": nets.opt_d.state_dict() if nets.opt_d is not None else None,
        "rng": _rng_state(),
    }
    torch.save(state, directory / TRAINING_STATE_FILE)


def load_training_checkpoint(directory: Path, *, nets: Nets, map_location) -> int:
    """Restore the training state saved by :func:`save_training_checkpoint`; returns its step."""
    state = torch.load(directory / TRAINING_STATE_FILE, map_location=map_location, weights_only=True)
    unwrap(nets.net_g).load_state_dict(state["net_g"])
    nets.opt_g.load_state_dict(state["optimizer"])
    if nets.ema is not None and state["ema"] is not None:
        nets.ema.load_state_dict(state["ema"])
    if nets.net_d is not None:
        if state.get("net_d") is None:
            raise RuntimeError(f"{directory} holds no discriminator: it is not an srgan-phase checkpoint (use another run.name)")
        unwrap(nets.net_d).load_state_dict(state["net_d"])
        nets.opt_d.load_state_dict(state["optimizer_d"])
    _set_rng_state(state["rng"])
    return int(state["step"])
