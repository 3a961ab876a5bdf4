"""The Ray edges: every ``import ray`` of the project lives in this package.

- :mod:`.cluster`: joining or starting a cluster, and keeping Ray's console lines quiet;
- :mod:`.ingest`: Ray Data training ingest (decode + random crop);
- :mod:`.trainer`: Ray Train DDP around the core's training step, with MLflow from rank 0;
- :mod:`.serving`: the Ray Serve endpoint;
- :mod:`.bulk`: the Ray Data bulk upscaling job.
"""
