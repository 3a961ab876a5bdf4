"""MLflow: runs and metrics (:mod:`.runs`), the model registry (:mod:`.registry`), and the one
resolver of model references (:mod:`.refs`: ``models:/NAME@ALIAS``, ``models:/NAME/N``, checkpoint
URIs -> a pinned source -> a local directory). No Ray."""
