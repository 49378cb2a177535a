# consul config write deploy/nomad/consul/embark-intentions.hcl
# Who may call EmbArk through the mesh: the ingress gateway (clients outside the mesh, see
# embark-ingress.nomad.hcl) and the services listed here. Add a Sources entry per in-mesh caller.
Kind = "service-intentions"
Name = "embark"
Sources = [
  {
    Name   = "embark-ingress"
    Action = "allow"
  },
  {
    Name   = "*"
    Action = "deny"
  },
]
