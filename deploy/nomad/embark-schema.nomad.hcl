# The one-shot schema migration: `embark schema apply` creates the keyspace and tables, and the
# Kafka topics with their replication and min.insync.replicas (idempotent). Run it before the first deploy of embark/kfc and after an upgrade that changes
# the schema; it exits when done.
#
#   nomad job run -var image=registry.example.com/embark:1.4.0 deploy/nomad/embark-schema.nomad.hcl

variable "image" {
  type = string
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "cassandra_contact_points" {
  type    = string
  default = "[\"cassandra.service.consul:9042\"]"
}

variable "cassandra_local_dc" {
  type    = string
  default = "datacenter1"
}

variable "cassandra_keyspace" {
  type    = string
  default = "embark"
}

variable "cassandra_replication" {
  type        = string
  default     = "{\"class\": \"NetworkTopologyStrategy\", \"replication_factor\": 3}"
  description = "Used only when the keyspace is created; later changes are an operator's ALTER KEYSPACE + repair."
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
  description = "Partitions of embark.jobs, as in kfc.nomad.hcl (only used when the topic is created)."
}

variable "kafka_replication_factor" {
  type        = number
  default     = 3
  description = "Replicas of each topic; with min.insync.replicas 2, one broker may die (docs/cluster.md)."
}

variable "kafka_min_insync_replicas" {
  type    = number
  default = 2
}

job "embark-schema" {
  datacenters = var.datacenters
  type        = "batch"

  group "schema" {
    count = 1

    # Cassandra may still be starting: retry a few times, then give up loudly.
    restart {
      attempts = 5
      interval = "10m"
      delay    = "20s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "apply" {
      driver = "docker"

      config {
        image   = var.image
        command = "embark"
        args    = ["schema", "apply"]
      }

      kill_timeout = "30s"

      env {
        EMBARK_STORE__BACKEND                   = "cassandra"
        EMBARK_STORE__CASSANDRA__CONTACT_POINTS = var.cassandra_contact_points
        EMBARK_STORE__CASSANDRA__LOCAL_DC       = var.cassandra_local_dc
        EMBARK_STORE__CASSANDRA__KEYSPACE       = var.cassandra_keyspace
        EMBARK_STORE__CASSANDRA__REPLICATION    = var.cassandra_replication

        # The topics are created here, not by whichever service starts first with the
        # broker's defaults.
        EMBARK_QUEUE__BACKEND                     = "kafka"
        EMBARK_QUEUE__KAFKA__BOOTSTRAP_SERVERS    = var.kafka_bootstrap_servers
        EMBARK_QUEUE__KAFKA__SECURITY_PROTOCOL    = var.kafka_security_protocol
        EMBARK_QUEUE__KAFKA__PARTITIONS           = "${var.kafka_partitions}"
        EMBARK_QUEUE__KAFKA__REPLICATION_FACTOR   = "${var.kafka_replication_factor}"
        EMBARK_QUEUE__KAFKA__MIN_INSYNC_REPLICAS  = "${var.kafka_min_insync_replicas}"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/schema.env"
        env         = true
        data        = <<-EOT
          {{- if nomadVarExists "nomad/jobs/embark-schema" }}{{ with nomadVar "nomad/jobs/embark-schema" }}
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
        cpu    = 200
        memory = 256
      }
    }
  }
}
