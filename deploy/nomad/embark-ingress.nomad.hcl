# The entry point for gRPC clients outside the Consul service mesh: a Consul ingress gateway
# (Envoy, run by Nomad) that forwards its listener to the "embark" service over mTLS and
# balances per request (embark-defaults.hcl sets Protocol "grpc").
#
#   consul config write deploy/nomad/consul/embark-defaults.hcl
#   consul config write deploy/nomad/consul/embark-intentions.hcl   # the gateway may call embark
#   nomad job run deploy/nomad/embark-ingress.nomad.hcl
#   grpcurl -plaintext <gateway-node>:8080 grpc.health.v1.Health/Check
#
# TLS towards clients and the bearer token (EMBARK_TOKEN) are the operator's: terminate TLS on a
# load balancer in front of the gateway, or enable the ingress gateway's own TLS in Consul.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "port" {
  type        = number
  default     = 8080
  description = "The static host port clients dial."
}

variable "count" {
  type    = number
  default = 2
}

job "embark-ingress" {
  datacenters = var.datacenters
  type        = "service"

  group "ingress" {
    count = var.count

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      mode = "bridge"

      port "grpc" {
        static = var.port
        to     = 8080
      }
    }

    service {
      name     = "embark-ingress"
      port     = "grpc"
      provider = "consul"

      connect {
        gateway {
          proxy {}

          ingress {
            listener {
              port     = 8080
              protocol = "grpc"

              service {
                name = "embark"
                # One service on the listener, so any :authority a client sends routes to it.
                hosts = ["*"]
              }
            }
          }
        }
      }
    }
  }
}
