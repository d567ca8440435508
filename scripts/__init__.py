"""Developer scripts: the performance benchmark (``python -m scripts.bench``) and its helpers."""
