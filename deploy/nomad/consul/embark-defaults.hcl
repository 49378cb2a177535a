# consul config write deploy/nomad/consul/embark-defaults.hcl
# Per-request balancing of EmbArk calls across instances (see retina-defaults.hcl).
Kind     = "service-defaults"
Name     = "embark"
Protocol = "grpc"
