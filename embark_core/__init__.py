"""What EmbArk, KFC and Retina share and must say once: the error base every service's errors
derive from, the server interceptor that turns them into gRPC statuses, and TLS.

``retina`` must not import ``embark`` (DESIGN.md's dependency direction), so what both need
lives here, as TEI's ``core`` crate serves its router and its backends. This package imports
only grpc, protobuf and pydantic: nothing of either service.
"""
