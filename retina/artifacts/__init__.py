"""Model artifacts: builders (text.py, image.py), the cached build and catalog writer (build.py)."""
