# The one-shot schema migration: `embark schema apply` creates the keyspace and tables
# (idempotent). Run it before the first deploy of embark/kfc and after an upgrade that changes
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
