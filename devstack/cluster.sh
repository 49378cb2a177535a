#!/usr/bin/env bash
# cluster.sh - the devstack's cluster mode: three Apache Cassandra 5.0 nodes in one ring and three
# Apache Kafka 3.9 brokers in one KRaft quorum, on loopback, beside the single-node devstack.
#
# Owns: the node layout (node N = Cassandra and a Kafka broker on 127.0.0.1N, run from
# .devstack/cluster/nodeN/), the start order (Cassandra one node at a time, seed first; the three
# brokers together, since a KRaft quorum of three needs two voters before any broker is ready)
# and the shared Kafka cluster id. Each server itself is started, checked, stopped and wiped by
# devstack.sh with per-node settings and the templates beside this script, so the JVM flags and
# readiness checks are the single node's. `devstack.sh COMMAND cluster [NODE]` lands here.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly DEVSTACK_SH="${SCRIPT_DIR}/devstack.sh"

# --- configuration (environment) -----------------------------------------------------------------
readonly ROOT="${DEVSTACK_CLUSTER_DIR:-${REPO_ROOT}/.devstack/cluster}"
# Where the jars are (a devstack run directory with cassandra/lib and kafka/lib): the single
# node's by default, fetched there when missing; never written to otherwise.
readonly JARS_FROM="${DEVSTACK_CLUSTER_JARS_FROM:-${DEVSTACK_DIR:-${REPO_ROOT}/.devstack}}"
# Node N listens on ${HOST_PREFIX}N (127.0.0.11-13): each Cassandra node needs an address of its
# own (the ring identifies nodes by address), and the same ports on every node keep the layout
# readable. None of these collides with the single node (127.0.0.1:9042/7000/9092/9093).
readonly HOST_PREFIX="${DEVSTACK_CLUSTER_HOST_PREFIX:-127.0.0.1}"
readonly CQL_PORT="${DEVSTACK_CLUSTER_CQL_PORT:-19042}"
readonly STORAGE_PORT="${DEVSTACK_CLUSTER_STORAGE_PORT:-17000}"
readonly KAFKA_PORT="${DEVSTACK_CLUSTER_KAFKA_PORT:-19092}"
readonly CONTROLLER_PORT="${DEVSTACK_CLUSTER_CONTROLLER_PORT:-19093}"
# JMX binds 127.0.0.1 whatever the node's address, so each node needs its own port (nodetool).
readonly JMX_PORT_BASE="${DEVSTACK_CLUSTER_JMX_PORT_BASE:-17190}"
# Three nodes beside the single node and five developers' processes in 24 GB: about 1 GiB
# resident per Cassandra node and 0.5 GiB per broker.
readonly CASSANDRA_HEAP="${DEVSTACK_CLUSTER_CASSANDRA_HEAP:--Xms512m -Xmx768m}"
readonly KAFKA_HEAP="${DEVSTACK_CLUSTER_KAFKA_HEAP:--Xms256m -Xmx384m}"
readonly NODES=(1 2 3)
# Murmur3's range split in three: one token per node, evenly spaced.
readonly TOKENS=(-9223372036854775808 -3074457345618258603 3074457345618258602)

usage() {
  cat <<EOF
Usage: devstack/cluster.sh COMMAND [NODE]
   or: devstack/devstack.sh COMMAND cluster [NODE]

Three Cassandra 5.0 nodes (one ring, datacenter1) and three Kafka 3.9 brokers (one KRaft quorum)
on ${HOST_PREFIX}1-3, run from ${ROOT}.

Commands:
  start [NODE]          start what is not running (Cassandra seed first, one node at a time;
                        the brokers together) and wait until each is ready
  stop [NODE]           SIGTERM, then SIGKILL after devstack.sh's stop timeout
  kill NODE             SIGKILL (a crash, for fault tests)
  reset [NODE]          stop and wipe the data (keeps the jars)
  status [NODE]         running/stopped per server; exit 3 when any is stopped
  logs NODE [-f|LINES]  tail one server's log
  env                   the client settings for this cluster (EMBARK_/KFC_ variables)
  nodetool N ARGS...    Cassandra's nodetool against node N (1-3), e.g. nodetool 1 status
  help                  this message

NODE: all (default), cassandra, kafka, node1..node3 (both servers of a node), or one server:
cassandra1..cassandra3, kafka1..kafka3.

Addresses: CQL ${HOST_PREFIX}{1,2,3}:${CQL_PORT}, storage :${STORAGE_PORT}, JMX 127.0.0.1:$((JMX_PORT_BASE + 1))-$((JMX_PORT_BASE + 3));
Kafka ${HOST_PREFIX}{1,2,3}:${KAFKA_PORT}, controllers :${CONTROLLER_PORT}.

Environment (defaults): DEVSTACK_CLUSTER_DIR=${ROOT}
  DEVSTACK_CLUSTER_JARS_FROM=${JARS_FROM}
  DEVSTACK_CLUSTER_CASSANDRA_HEAP="${CASSANDRA_HEAP}"  DEVSTACK_CLUSTER_KAFKA_HEAP="${KAFKA_HEAP}"
  DEVSTACK_CLUSTER_HOST_PREFIX, _CQL_PORT, _STORAGE_PORT, _KAFKA_PORT, _CONTROLLER_PORT,
  _JMX_PORT_BASE; devstack.sh's DEVSTACK_START_TIMEOUT and DEVSTACK_STOP_TIMEOUT apply.
EOF
}

die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

host_of() { printf '%s%s' "${HOST_PREFIX}" "$1"; }
node_dir() { printf '%s/node%s' "${ROOT}" "$1"; }

seeds() { printf '%s:%s' "$(host_of 1)" "${STORAGE_PORT}"; }

voters() {
  local n out=()
  for n in "${NODES[@]}"; do out+=("${n}@$(host_of "${n}"):${CONTROLLER_PORT}"); done
  local IFS=,
  printf '%s' "${out[*]}"
}

# devstack.sh for one server of node N, with that node's addresses, templates and heap.
node_devstack() { # node_devstack N COMMAND SERVER [ARGS...]
  local n="$1"; shift
  DEVSTACK_DIR="$(node_dir "${n}")" \
  DEVSTACK_HOST="$(host_of "${n}")" \
  DEVSTACK_CQL_PORT="${CQL_PORT}" \
  DEVSTACK_CASSANDRA_STORAGE_PORT="${STORAGE_PORT}" \
  DEVSTACK_CASSANDRA_JMX_PORT="$((JMX_PORT_BASE + n))" \
  DEVSTACK_KAFKA_PORT="${KAFKA_PORT}" \
  DEVSTACK_KAFKA_CONTROLLER_PORT="${CONTROLLER_PORT}" \
  DEVSTACK_CASSANDRA_HEAP="${CASSANDRA_HEAP}" \
  DEVSTACK_KAFKA_HEAP="${KAFKA_HEAP}" \
  DEVSTACK_CASSANDRA_YAML="${SCRIPT_DIR}/cluster/cassandra.yaml.in" \
  DEVSTACK_KAFKA_PROPERTIES="${SCRIPT_DIR}/cluster/server.properties.in" \
  DEVSTACK_NODE_ID="${n}" \
  DEVSTACK_CASSANDRA_SEEDS="$(seeds)" \
  DEVSTACK_CASSANDRA_INITIAL_TOKEN="${TOKENS[$((n - 1))]}" \
  DEVSTACK_KAFKA_VOTERS="$(voters)" \
  DEVSTACK_CASSANDRA_UNSAFESYSTEM=false \
  "${DEVSTACK_SH}" "$@"
}

# The jars: linked from JARS_FROM into every node (read-only at run time), fetched there first
# when absent (devstack.sh fetch only downloads; it starts nothing).
link_jars() {
  local server n lib
  for server in cassandra kafka; do
    lib="${JARS_FROM}/${server}/lib"
    if [[ ! -f "${lib}/.pom.sha256" ]]; then
      DEVSTACK_DIR="${JARS_FROM}" "${DEVSTACK_SH}" fetch "${server}"
    fi
    for n in "${NODES[@]}"; do
      mkdir -p "$(node_dir "${n}")/${server}"
      ln -sfn "${lib}" "$(node_dir "${n}")/${server}/lib"
    done
  done
}

# One Kafka cluster id for the three brokers, made once; devstack.sh formats each broker's
# storage with the id it finds beside it.
kafka_cluster_id() {
  local id_file="${ROOT}/kafka-cluster.id" n cp
  if [[ ! -s "${id_file}" ]]; then
    cp="$(printf '%s:' "${JARS_FROM}"/kafka/lib/*.jar)"
    java -cp "${cp%:}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 >"${id_file}"
    [[ -s "${id_file}" ]] || die "kafka: could not generate a cluster id"
  fi
  for n in "${NODES[@]}"; do
    cp "${id_file}" "$(node_dir "${n}")/kafka/cluster.id"
  done
}

# "server:node" pairs for a NODE argument, in start order (Cassandra first, seed first).
targets() {
  local which="${1:-all}" n
  case "${which}" in
    all) for n in "${NODES[@]}"; do echo "cassandra:${n}"; done
         for n in "${NODES[@]}"; do echo "kafka:${n}"; done ;;
    cassandra | kafka) for n in "${NODES[@]}"; do echo "${which}:${n}"; done ;;
    node[1-3]) echo "cassandra:${which#node}"; echo "kafka:${which#node}" ;;
    cassandra[1-3]) echo "cassandra:${which#cassandra}" ;;
    kafka[1-3]) echo "kafka:${which#kafka}" ;;
    *) usage >&2; die "unknown node: ${which}" ;;
  esac
}

cmd_start() {
  local target server n pids=() pid rc=0
  mkdir -p "${ROOT}"
  link_jars
  kafka_cluster_id
  for target in $(targets "${1:-all}"); do
    server="${target%%:*}" n="${target##*:}"
    if [[ "${server}" == cassandra ]]; then
      # One at a time: on two cores three JVMs starting together each take as long as three
      # sequential starts, and a ring grows most safely one node at a time.
      node_devstack "${n}" start cassandra | sed "s/^/node${n} /"
    else
      node_devstack "${n}" start kafka 2>&1 | sed "s/^/node${n} /" &
      pids+=("$!")
    fi
  done
  for pid in "${pids[@]}"; do wait "${pid}" || rc=$?; done
  return "${rc}"
}

cmd_each() { # cmd_each COMMAND [NODE]: run a devstack.sh command per server, in order
  local command="$1" target server n rc=0 pids=() pid
  for target in $(targets "${2:-all}"); do
    server="${target%%:*}" n="${target##*:}"
    if [[ "${server}" == kafka && "${command}" =~ ^(stop|reset)$ ]]; then
      # Together: a broker stopping after the other two has no controller quorum left for its
      # controlled shutdown and would wait out the stop timeout.
      node_devstack "${n}" "${command}" "${server}" 2>&1 | sed "s/^/node${n} /" &
      pids+=("$!")
    else
      node_devstack "${n}" "${command}" "${server}" | sed "s/^/node${n} /" || rc=3
    fi
  done
  for pid in "${pids[@]}"; do wait "${pid}" || rc=$?; done
  if [[ "${command}" == reset && "${2:-all}" =~ ^(all|kafka)$ ]]; then
    rm -f "${ROOT}/kafka-cluster.id"  # a new quorum gets a new cluster id
  fi
  return "${rc}"
}

cmd_kill() {
  local target server n pid pf
  [[ -n "${1:-}" ]] || die "kill needs a NODE"
  for target in $(targets "$1"); do
    server="${target%%:*}" n="${target##*:}"
    pf="$(node_dir "${n}")/${server}/server.pid"
    if [[ -f "${pf}" ]] && pid="$(<"${pf}")" && kill -KILL "${pid}" 2>/dev/null; then
      echo "node${n} ${server}: SIGKILLed (pid ${pid})"
      rm -f "${pf}"
    else
      echo "node${n} ${server}: not running"
    fi
  done
}

cmd_logs() {
  local which="${1:-}" target
  [[ "${which}" =~ ^(cassandra|kafka)[1-3]$ ]] || { usage >&2; die "logs needs one server, e.g. cassandra2"; }
  target="$(targets "${which}")"
  shift
  node_devstack "${target##*:}" logs "${target%%:*}" "$@"
}

# nodetool against node N over its JMX port (what `repair`, `status` and `listpendinghints` need).
cmd_nodetool() {
  local n="${1:-}"
  [[ "${n}" =~ ^[1-3]$ ]] || die "nodetool needs a node number (1-3), e.g. nodetool 1 status"
  shift
  DEVSTACK_NODETOOL_NODE_DIR="$(node_dir "${n}")/cassandra" \
    DEVSTACK_CASSANDRA_JMX_PORT="$((JMX_PORT_BASE + n))" "${SCRIPT_DIR}/nodetool.sh" "$@"
}

cmd_env() {
  local n cql=() kafka=()
  for n in "${NODES[@]}"; do
    cql+=("\"$(host_of "${n}"):${CQL_PORT}\"")
    kafka+=("$(host_of "${n}"):${KAFKA_PORT}")
  done
  local IFS=,
  cat <<EOF
# the settings of docs/cluster.md for this cluster; the same with KFC_ instead of EMBARK_
EMBARK_STORE__BACKEND=cassandra
EMBARK_STORE__CASSANDRA__CONTACT_POINTS='[${cql[*]}]'
EMBARK_STORE__CASSANDRA__REPLICATION='{"class": "NetworkTopologyStrategy", "datacenter1": 3}'
EMBARK_STORE__CASSANDRA__READ_CONSISTENCY=LOCAL_QUORUM
EMBARK_STORE__CASSANDRA__WRITE_CONSISTENCY=LOCAL_QUORUM
EMBARK_QUEUE__BACKEND=kafka
EMBARK_QUEUE__KAFKA__BOOTSTRAP_SERVERS=${kafka[*]}
EMBARK_QUEUE__KAFKA__REPLICATION_FACTOR=3
EMBARK_QUEUE__KAFKA__MIN_INSYNC_REPLICAS=2
EOF
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
    start) cmd_start "${1:-all}" ;;
    stop) cmd_each stop "${1:-all}" ;;
    restart) cmd_each stop "${1:-all}"; cmd_start "${1:-all}" ;;
    reset) cmd_each reset "${1:-all}" ;;
    status) cmd_each status "${1:-all}" ;;
    kill) cmd_kill "${1:-}" ;;
    logs) cmd_logs "$@" ;;
    env) cmd_env ;;
    nodetool) cmd_nodetool "$@" ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command: ${cmd}" ;;
  esac
}

main "$@"
