"""srgan-ray: SRGAN (Ledig et al., CVPR 2017) as a distributed pipeline on Ray.

Layers, from the bottom (each imports only those below it; ``lint-imports`` checks the contracts in
pyproject.toml): :mod:`srgan.errors` (a leaf) < :mod:`srgan.core` (plain PyTorch) < :mod:`srgan.io`
(storage, data files) < :mod:`srgan.tracking` (MLflow) < :mod:`srgan.config` (the typed run config)
< :mod:`srgan.distributed` (Ray) < :mod:`srgan.app` (jobs, CLI plumbing). See docs/design.md.
"""
