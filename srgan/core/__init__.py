"""The plain-PyTorch core: models, losses, the MATLAB-bicubic degradation, metrics, the training
step, checkpoints, images and the Upscaler.

It imports torch, torchvision, numpy, pillow, safetensors and pyyaml, and from the project only
:mod:`srgan.errors`: no Ray, MLflow, pydantic, boto3 or pyarrow (``lint-imports`` checks it), so it
runs on a bare GPU machine, in a notebook, or inside any of the edges. It reads local files only.
"""
