"""EmbArk's gRPC front: the servicer, the guard (errors, metrics, token), health, reflection
and serving."""
