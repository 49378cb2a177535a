# Retina: the encoders (MiniLM-L6 text, EfficientNet-Lite0 image; int8 ONNX on CPU).
# Reached only through the Consul service mesh (Connect: mTLS, per-request gRPC balancing once
# the service-defaults in deploy/nomad/consul/ declare protocol "grpc"). CPU-bound: scaled out by
# the Nomad Autoscaler on average CPU; 2 reserved cores and 2 onnxruntime threads each.
#
#   nomad job run -var image=registry.example.com/embark:1.4.0 deploy/nomad/retina.nomad.hcl

variable "image" {
  type        = string
  description = "The EmbArk image (./Dockerfile): the same tag for embark, kfc and retina."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "count" {
  type        = number
  default     = 2
  description = "Initial allocations; the autoscaler moves it between scaling.min and max."
}

job "retina" {
  datacenters = var.datacenters
  type        = "service"

  # One canary per deploy; promoted once its gRPC health check passes, reverted if it never does.
  update {
    max_parallel      = 1
    canary            = 1
    auto_promote      = true
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "20s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
    stagger           = "30s"
  }

  group "retina" {
    count = var.count

    # Horizontal scaling on CPU (Nomad Autoscaler, nomad-apm): inference is the whole cost.
    scaling {
      enabled = true
      min     = 1
      max     = 16

      policy {
        cooldown            = "2m"
        evaluation_interval = "30s"

        check "avg_cpu" {
          source = "nomad-apm"
          query  = "avg_cpu-allocated"

          strategy "target-value" {
            target = 70
          }
        }
      }
    }

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      mode = "bridge"

      # Prometheus scrapes /metrics through an Envoy expose path on this host port; the
      # metrics listener itself stays on loopback inside the allocation's namespace.
      port "metrics" {
        to = -1
      }
    }

    # Consul deregisters the instance first, then the task gets SIGTERM: no new calls arrive
    # while in-flight ones finish within RETINA_SHUTDOWN_GRACE_S.
    shutdown_delay = "5s"

    service {
      name     = "retina"
      port     = "50052"
      provider = "consul"
      tags     = ["grpc"]

      connect {
        sidecar_service {
          proxy {
            expose {
              path {
                path            = "/metrics"
                protocol        = "http"
                local_path_port = 9102
                listener_port   = "metrics"
              }
            }
          }
        }

        sidecar_task {
          resources {
            cpu    = 200
            memory = 128
          }
        }
      }

      # gRPC health through an Envoy expose path (the service port itself is mesh-only).
      # Readiness: NOT_SERVING until the models are loaded, and during shutdown.
      check {
        name         = "retina-grpc-health"
        type         = "grpc"
        expose       = true
        protocol     = "http2"
        path         = "/grpc.health.v1.Health/Check"
        grpc_service = "retina.v1.Retina"
        interval     = "10s"
        timeout      = "3s"
      }
    }

    service {
      name     = "retina-metrics"
      port     = "metrics"
      provider = "consul"
      tags     = ["prometheus"]
    }

    task "retina" {
      driver = "docker"

      config {
        image   = var.image
        command = "retina"
        args    = ["serve"]
      }

      # Longer than RETINA_SHUTDOWN_GRACE_S (10 s): the process ends on its own before SIGKILL.
      # Clients cap kill_timeout at their max_kill_timeout (30 s by default).
      kill_timeout = "30s"
      kill_signal  = "SIGTERM"

      env {
        # Loopback: only the sidecar (mTLS) and the expose paths reach Retina.
        RETINA_HOST          = "127.0.0.1"
        RETINA_PORT          = "50052"
        RETINA_METRICS_PORT  = "9102"
        RETINA_ARTIFACTS_DIR = "/app/artifacts"
        # One inference per reserved core (resources.cores below), one thread each: 1.7x the
        # texts/s of one two-thread inference (bench/retina_threads.py).
        RETINA_INTRA_OP_THREADS          = "1"
        RETINA_MAX_CONCURRENT_INFERENCES = "2"
        RETINA_PREPROCESS_THREADS = "2"
      }

      resources {
        # Two whole cores (a cpuset): inference threads never share them with a neighbour.
        cores      = 2
        memory     = 2048
        memory_max = 3072
      }
    }
  }
}
