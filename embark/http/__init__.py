"""EmbArk's HTTP front, in the same process and event loop as the gRPC server and sharing its
``EmbarkService`` (so its LRU and archive): the OpenAI-compatible ``/v1/embeddings`` and
``/v1/models``, the native ``/embed``, ``/categorize`` and ``/similar``, ``/health``,
``/ready``, ``/metrics``.

    app.py      HttpFront: the aiohttp application, its middlewares, start and stop
    routes.py   the route handlers: JSON in, EmbarkService, JSON out
    schemas.py  request bodies (pydantic) and response documents
    errors.py   the one table from EmbArk errors to HTTP statuses in OpenAI's error shape
"""

from embark.http.app import HttpFront, HttpOptions

__all__ = ["HttpFront", "HttpOptions"]
