"""Storage and data files: local paths, ``file://`` and ``s3://`` (pyarrow), listing and decoding
training images, packing Parquet shards. No Ray and no MLflow."""
