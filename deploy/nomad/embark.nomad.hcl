# EmbArk: the gRPC front. Reads the archive (Cassandra), queues misses (Kafka), and encodes
# read-through requests (wait_ms > 0) through Retina over the Consul service mesh.
#
#   nomad var put nomad/jobs/embark token=... cassandra_username=... cassandra_password=...
#   nomad job run -preserve-counts -var image=registry.example.com/embark:1.4.0 \
#     -var heads_source=https://artifacts.example.com/heads-v3.tar.gz deploy/nomad/embark.nomad.hcl
#
# -preserve-counts keeps the count the autoscaler set (without it every deploy resets it to
# var.count). Clients in the mesh declare an upstream "embark"; clients outside it come in
# through the Consul ingress gateway (embark-ingress.nomad.hcl, consul/embark-intentions.hcl). Secrets come from the Nomad Variable nomad/jobs/embark,
# never from this file.

variable "image" {
  type        = string
  description = "The EmbArk image (./Dockerfile): the same tag for embark, kfc and retina."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "count" {
  type    = number
  default = 2
}

variable "cassandra_contact_points" {
  type        = string
  default     = "[\"cassandra.service.consul:9042\"]"
  description = "JSON list of host:port; two or three per DC (the driver discovers the ring)."
}

variable "cassandra_local_dc" {
  type        = string
  default     = "datacenter1"
  description = "The Cassandra DC this Nomad datacenter sits in (LOCAL_* consistency)."
}

variable "cassandra_keyspace" {
  type    = string
  default = "embark"
}

variable "kafka_bootstrap_servers" {
  type        = string
  default     = "kafka.service.consul:9092"
  description = "Comma-separated brokers. Kafka clients talk to every broker directly, so Kafka is not a mesh upstream."
}

variable "kafka_security_protocol" {
  type    = string
  default = "PLAINTEXT"
}

variable "heads_source" {
  type        = string
  default     = ""
  description = "Categorizer heads to serve: a go-getter source (https://.../heads-v3.tar.gz, s3::..., gcs::...) of an archive of `embark heads train` output; empty serves no heads. A new value is a new job version (a canary rollout)."
}

variable "kafka_partitions" {
  type        = number
  default     = 12
  description = "Partitions of embark.jobs when it is created; KFC's scaling.max must not exceed it."
}

job "embark" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    canary            = 1
    auto_promote      = true
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "15s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    stagger           = "30s"
  }

  group "embark" {
    count = var.count

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      mode = "bridge"

      # Prometheus scrapes /metrics through an Envoy expose path on this host port.
      port "metrics" {
        to = -1
      }
    }

    # Deregister from Consul, then SIGTERM: callers stop routing here before the grace starts.
    shutdown_delay = "5s"

    service {
      name     = "embark"
      port     = "50051"
      provider = "consul"
      tags     = ["grpc"]

      connect {
        sidecar_service {
          proxy {
            # Read-through calls go to 127.0.0.1:50052, then over mTLS to a healthy Retina.
            upstreams {
              destination_name = "retina"
              local_bind_port  = 50052
            }

            expose {
              path {
                path            = "/metrics"
                protocol        = "http"
                local_path_port = 9100
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

      # Readiness, not liveness: NOT_SERVING while Cassandra or Kafka is unreachable takes the
      # instance out of rotation without restarting it (EmbArk degrades, it does not crash).
      check {
        name         = "embark-grpc-health"
        type         = "grpc"
        expose       = true
        protocol     = "http2"
        path         = "/grpc.health.v1.Health/Check"
        grpc_service = "embark.v1.EmbArk"
        interval     = "10s"
        timeout      = "3s"
      }
    }

    service {
      name     = "embark-metrics"
      port     = "metrics"
      provider = "consul"
      tags     = ["prometheus"]
    }

    task "embark" {
      driver = "docker"

      config {
        image   = var.image
        command = "embark"
        args    = ["serve"]
      }

      # Categorizer heads, unpacked into the task directory before the task starts; EmbArk
      # loads them at start (a running EmbArk also reloads its heads directory on SIGHUP).
      dynamic "artifact" {
        for_each = var.heads_source == "" ? [] : [var.heads_source]
        content {
          source      = artifact.value
          destination = "local/heads"
        }
      }

      # Longer than EMBARK_SHUTDOWN_GRACE_S (10 s) plus the Kafka flush on close (5 s).
      kill_timeout = "30s"
      kill_signal  = "SIGTERM"

      env {
        # Loopback: only the sidecar (mTLS) and the expose paths reach the process.
        EMBARK_HOST           = "127.0.0.1"
        EMBARK_PORT           = "50051"
        EMBARK_METRICS_PORT   = "9100"
        EMBARK_CATALOG        = "/app/artifacts/catalog.json"
        EMBARK_HEADS_DIR      = "${NOMAD_TASK_DIR}/heads"
        EMBARK_RETINA_ADDRESS = "${NOMAD_UPSTREAM_ADDR_retina}"
        # One serving process per reserved core (resources.cpu = 1000 MHz below): inside the
        # allocation the CPU affinity shows the host's cores, which the default (0) would use.
        EMBARK_WORKERS = "1"

        EMBARK_STORE__BACKEND                   = "cassandra"
        EMBARK_STORE__CASSANDRA__CONTACT_POINTS = var.cassandra_contact_points
        EMBARK_STORE__CASSANDRA__LOCAL_DC       = var.cassandra_local_dc
        EMBARK_STORE__CASSANDRA__KEYSPACE       = var.cassandra_keyspace
        EMBARK_QUEUE__BACKEND                   = "kafka"
        EMBARK_QUEUE__KAFKA__BOOTSTRAP_SERVERS  = var.kafka_bootstrap_servers
        EMBARK_QUEUE__KAFKA__SECURITY_PROTOCOL  = var.kafka_security_protocol
        EMBARK_QUEUE__KAFKA__PARTITIONS         = "${var.kafka_partitions}"
        EMBARK_QUEUE__KAFKA__CLIENT_ID          = "embark-${NOMAD_ALLOC_INDEX}"
      }

      # Secrets from the Nomad Variable nomad/jobs/embark (readable by this job's workload
      # identity only). Absent or empty keys are left unset: no token, no Cassandra/Kafka auth.
      # Each item of a Nomad Variable is a struct, so `with .key` is always true, even for a key
      # the variable lacks; `.key.Value` is the empty string then.
      template {
        destination = "${NOMAD_SECRETS_DIR}/embark.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- if nomadVarExists "nomad/jobs/embark" }}{{ with nomadVar "nomad/jobs/embark" }}
          {{- with .token.Value }}
          EMBARK_TOKEN={{ . }}
          {{- end }}
          {{- with .cassandra_username.Value }}
          EMBARK_STORE__CASSANDRA__USERNAME={{ . }}
          {{- end }}
          {{- with .cassandra_password.Value }}
          EMBARK_STORE__CASSANDRA__PASSWORD={{ . }}
          {{- end }}
          {{- with .kafka_sasl_mechanism.Value }}
          EMBARK_QUEUE__KAFKA__SASL_MECHANISM={{ . }}
          {{- end }}
          {{- with .kafka_sasl_username.Value }}
          EMBARK_QUEUE__KAFKA__SASL_USERNAME={{ . }}
          {{- end }}
          {{- with .kafka_sasl_password.Value }}
          EMBARK_QUEUE__KAFKA__SASL_PASSWORD={{ . }}
          {{- end }}
          {{- end }}{{ end }}
        EOT
      }

      resources {
        cpu        = 1000
        memory     = 512
        memory_max = 1024
      }
    }
  }
}
