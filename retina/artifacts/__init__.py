"""Model artifacts: model definitions (definition.py, the built-ins in models.toml), one builder
per kind (text.py, image.py, with the torch-free bert_onnx.py), and the cached build and catalog
writer (build.py)."""
