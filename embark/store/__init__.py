"""Archives: the `EmbeddingStore` protocol (base.py), one file per backend, the LRU (cached.py)."""
