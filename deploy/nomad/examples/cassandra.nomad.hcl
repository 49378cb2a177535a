# EXAMPLE ONLY: a single-node Cassandra 5.0 for a dev/staging Nomad cluster, registered in
# Consul as "cassandra" (so cassandra.service.consul:9042 resolves). Production runs a real
# multi-node cluster (3+ nodes per DC, replication_factor 3) managed outside Nomad or with one
# job per node on dedicated hosts; see docs/deploy.md, "Prerequisites".
#
# Prerequisite: a client host volume "cassandra-data" (client { host_volume "cassandra-data" {
# path = "/opt/cassandra-data" } }) on the node that should hold the data.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "cassandra" {
  datacenters = var.datacenters
  type        = "service"

  group "cassandra" {
    count = 1

    volume "data" {
      type   = "host"
      source = "cassandra-data"
    }

    network {
      # Host networking: the driver connects to the address each node advertises (the ring),
      # which must be routable from every client; mesh upstreams cannot carry that.
      mode = "host"

      port "cql" {
        static = 9042
      }
    }

    service {
      name     = "cassandra"
      port     = "cql"
      provider = "consul"

      check {
        name     = "cql"
        type     = "tcp"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "cassandra" {
      driver = "docker"

      config {
        image        = "cassandra:5.0"
        network_mode = "host"
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/cassandra"
      }

      env {
        CASSANDRA_CLUSTER_NAME      = "embark"
        CASSANDRA_DC                = "datacenter1"
        CASSANDRA_ENDPOINT_SNITCH   = "GossipingPropertyFileSnitch"
        CASSANDRA_BROADCAST_ADDRESS = "${NOMAD_IP_cql}"
        MAX_HEAP_SIZE               = "2G"
        HEAP_NEWSIZE                = "512M"
      }

      # Drain (flush memtables) before stop: Cassandra needs more than Nomad's default 5 s.
      kill_timeout = "30s"

      resources {
        cpu    = 2000
        memory = 4096
      }
    }
  }
}
