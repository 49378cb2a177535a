"""EmbArk: the gRPC front, cache keys, model catalog, store and queue backends, client SDK and CLI.

Never imports `retina` or `kfc` (tests/unit/test_architecture.py): the hit path loads no encoder.
"""
