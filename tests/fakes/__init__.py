"""Fakes for unit tests only, outside every shipped package: ``encoding.FakeEncoding`` (EmbArk's
and KFC's ``Encoding`` protocol, deterministic vectors, switchable failures) and
``encoder.FakeEncoder`` (Retina's ``Encoder`` protocol without a model). Integration and e2e
tests never use them."""
