"""EmbArk's gRPC front: the servicer, the error interceptor, health, reflection and serving."""
