"""The contracts every service and client shares: the generated gRPC/protobuf stubs of proto/
(`make proto` writes ``v1/``) and the error base their statuses map to (``errors``)."""
