# consul config write deploy/nomad/consul/retina-intentions.hcl
# Only EmbArk (read-through) and KFC may call Retina: it fetches URLs on a caller's behalf.
Kind = "service-intentions"
Name = "retina"
Sources = [
  {
    Name   = "embark"
    Action = "allow"
  },
  {
    Name   = "kfc"
    Action = "allow"
  },
  {
    Name   = "*"
    Action = "deny"
  },
]
