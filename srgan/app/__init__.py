"""What the command lines put together: the training job around the trainer, evaluation runs, the
demo data set, and the CLIs' shared plumbing (:mod:`.cli`, which nothing in the package imports).
The typed run config is :mod:`srgan.config`, one layer down (the trainer reads it too)."""
