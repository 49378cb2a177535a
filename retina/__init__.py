"""Retina: EmbArk's encoders (text, image), safe image fetching, model artifacts, and the Retina
gRPC server. It depends on the generated stubs (``embark_api``) only, never on ``embark`` or
``kfc``.

    settings.py         RetinaSettings (RETINA_* environment variables)
    errors.py           the error hierarchy and each error's gRPC code
    encoders/           the Encoder protocol and one file per implementation
    fetch.py            fetching client-supplied image URLs safely
    artifacts/          building, validating and caching model artifacts; catalog.json
    service.py          RetinaService.embed: the Embed call, independent of gRPC
    batching.py         dynamic micro-batching of concurrent calls' items per encoder
    server.py           the grpc.aio server around RetinaService
    cli.py              the ``retina`` command

The package root re-exports nothing: importing ``retina.errors`` must not pull in onnxruntime,
aiohttp and grpc.aio. In-process callers import ``retina.service`` and ``retina.settings``.
"""
