# EXAMPLE ONLY: a single-node Kafka 3.9 in KRaft mode (broker + controller) for a dev/staging
# Nomad cluster, registered in Consul as "kafka" (kafka.service.consul:9092). Production runs a
# 3+ broker cluster with replication factor 3 (docs/deploy.md, "Prerequisites").
#
# Prerequisite: a client host volume "kafka-data".

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "kafka" {
  datacenters = var.datacenters
  type        = "service"

  group "kafka" {
    count = 1

    volume "data" {
      type   = "host"
      source = "kafka-data"
    }

    network {
      # Clients connect to the address the broker advertises: host networking keeps it routable.
      mode = "host"

      port "kafka" {
        static = 9092
      }

      port "controller" {
        static = 9093
      }
    }

    service {
      name     = "kafka"
      port     = "kafka"
      provider = "consul"

      check {
        name     = "kafka"
        type     = "tcp"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "kafka" {
      driver = "docker"

      config {
        image        = "apache/kafka:3.9.1"
        network_mode = "host"
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/kafka/data"
      }

      env {
        KAFKA_NODE_ID                                  = "1"
        KAFKA_PROCESS_ROLES                            = "broker,controller"
        KAFKA_LISTENERS                                = "PLAINTEXT://:9092,CONTROLLER://:9093"
        KAFKA_ADVERTISED_LISTENERS                     = "PLAINTEXT://${NOMAD_ADDR_kafka}"
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP           = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        KAFKA_CONTROLLER_LISTENER_NAMES                = "CONTROLLER"
        KAFKA_INTER_BROKER_LISTENER_NAME               = "PLAINTEXT"
        KAFKA_CONTROLLER_QUORUM_VOTERS                 = "1@${NOMAD_ADDR_controller}"
        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR         = "1"
        KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR = "1"
        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR            = "1"
        KAFKA_AUTO_CREATE_TOPICS_ENABLE                = "false"
        KAFKA_LOG_DIRS                                 = "/var/lib/kafka/data"
      }

      kill_timeout = "30s"

      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
