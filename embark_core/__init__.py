"""What EmbArk, KFC and Retina share and must say once on the server side: the guard every
service is registered through (any ``embark_api.errors.ServiceError`` becomes its gRPC status;
per-call metrics; the bearer token), and TLS settings.

``retina`` must not import ``embark`` (DESIGN.md's dependency direction), so what both need
lives here, as TEI's ``core`` crate serves its router and its backends. This package imports
no service: only grpc, protobuf, pydantic, the contracts (``embark_api``) and the client's
channel helpers.
"""
