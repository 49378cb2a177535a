# consul config write deploy/nomad/consul/retina-defaults.hcl
# Protocol "grpc" makes the Envoy sidecars balance Retina per request (HTTP/2 streams), not per
# TCP connection: KFC and EmbArk each hold one long-lived channel, which an L4 proxy would pin
# to a single Retina forever.
Kind     = "service-defaults"
Name     = "retina"
Protocol = "grpc"
