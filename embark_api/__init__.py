"""Generated gRPC/protobuf stubs of proto/ (`make proto`); the only code all services share."""
