# KFC: the Kafka consumer. Polls embark.jobs, skips keys already stored, encodes through Retina
# over the Consul service mesh, writes vectors to Cassandra, then commits the offsets.
#
#   nomad var put nomad/jobs/kfc cassandra_username=... cassandra_password=...
#   nomad job run -var image=registry.example.com/embark:1.4.0 deploy/nomad/kfc.nomad.hcl
#
# Parallelism is bounded by the topic's partitions (one consumer per partition at most), so
# scaling.max below must not exceed kafka_partitions: extra instances would sit idle.

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
  type    = string
  default = "datacenter1"
}

variable "cassandra_keyspace" {
  type    = string
  default = "embark"
}

variable "kafka_bootstrap_servers" {
  type    = string
  default = "kafka.service.consul:9092"
}

variable "kafka_security_protocol" {
  type    = string
  default = "PLAINTEXT"
}

variable "kafka_partitions" {
  type        = number
  default     = 12
  description = "Partitions of embark.jobs; keep scaling.max at or below it."
}

job "kfc" {
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

  group "kfc" {
    count = var.count

    # CPU of KFC tracks the miss rate (decode, de-duplicate, write); a lagging consumer group
    # is better signalled by queue lag, which the Prometheus APM can add as a second check.
    scaling {
      enabled = true
      min     = 1
      # Never above the partitions of embark.jobs (kafka_partitions = 12).
      max = 12

      policy {
        cooldown            = "3m"
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

      port "metrics" {
        to = -1
      }
    }

    service {
      # KFC serves no RPCs; the service exists for its health check and its mesh identity
      # (the sidecar carries its calls to Retina).
      name     = "kfc"
      port     = "50053"
      provider = "consul"

      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "retina"
              local_bind_port  = 50052
            }

            expose {
              path {
                path            = "/metrics"
                protocol        = "http"
                local_path_port = 9101
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

      check {
        name     = "kfc-grpc-health"
        type     = "grpc"
        expose   = true
        protocol = "http2"
        path     = "/grpc.health.v1.Health/Check"
        interval = "10s"
        timeout  = "3s"
      }
    }

    service {
      name     = "kfc-metrics"
      port     = "metrics"
      provider = "consul"
      tags     = ["prometheus"]
    }

    task "kfc" {
      driver = "docker"

      config {
        image   = var.image
        command = "kfc"
        args    = ["run"]
      }

      # On SIGTERM KFC finishes the batch in hand (write, commit) and leaves the group. A
      # batch cut short by SIGKILL is redelivered (offsets are committed after the write only).
      kill_timeout = "30s"
      kill_signal  = "SIGTERM"

      env {
        KFC_HOST           = "127.0.0.1"
        KFC_HEALTH_PORT    = "50053"
        KFC_METRICS_PORT   = "9101"
        KFC_CATALOG        = "/app/artifacts/catalog.json"
        KFC_RETINA_ADDRESS = "${NOMAD_UPSTREAM_ADDR_retina}"

        KFC_STORE__BACKEND                   = "cassandra"
        KFC_STORE__CASSANDRA__CONTACT_POINTS = var.cassandra_contact_points
        KFC_STORE__CASSANDRA__LOCAL_DC       = var.cassandra_local_dc
        KFC_STORE__CASSANDRA__KEYSPACE       = var.cassandra_keyspace
        KFC_QUEUE__BACKEND                   = "kafka"
        KFC_QUEUE__KAFKA__BOOTSTRAP_SERVERS  = var.kafka_bootstrap_servers
        KFC_QUEUE__KAFKA__SECURITY_PROTOCOL  = var.kafka_security_protocol
        KFC_QUEUE__KAFKA__PARTITIONS         = "${var.kafka_partitions}"
        KFC_QUEUE__KAFKA__GROUP_ID           = "kfc"
        KFC_QUEUE__KAFKA__CLIENT_ID          = "kfc-${NOMAD_ALLOC_INDEX}"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/kfc.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- if nomadVarExists "nomad/jobs/kfc" }}{{ with nomadVar "nomad/jobs/kfc" }}
          {{- with .cassandra_username.Value }}
          KFC_STORE__CASSANDRA__USERNAME={{ . }}
          {{- end }}
          {{- with .cassandra_password.Value }}
          KFC_STORE__CASSANDRA__PASSWORD={{ . }}
          {{- end }}
          {{- with .kafka_sasl_mechanism.Value }}
          KFC_QUEUE__KAFKA__SASL_MECHANISM={{ . }}
          {{- end }}
          {{- with .kafka_sasl_username.Value }}
          KFC_QUEUE__KAFKA__SASL_USERNAME={{ . }}
          {{- end }}
          {{- with .kafka_sasl_password.Value }}
          KFC_QUEUE__KAFKA__SASL_PASSWORD={{ . }}
          {{- end }}
          {{- end }}{{ end }}
        EOT
      }

      resources {
        cpu        = 500
        memory     = 512
        memory_max = 1024
      }
    }
  }
}
