"""Encoders: the `Encoder` protocol (base.py) and one file per implementation."""
