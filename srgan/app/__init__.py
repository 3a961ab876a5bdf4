"""What the command lines put together: the typed run config, the training job around the trainer,
evaluation runs, the demo data set, and the CLIs' shared plumbing (:mod:`.cli`, which nothing in
the package imports)."""
