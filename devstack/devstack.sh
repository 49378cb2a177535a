#!/usr/bin/env bash
# devstack.sh - real single-node Apache Cassandra 5.0 and Apache Kafka 3.9 (KRaft) on loopback,
# assembled from Maven Central jars and run with `java -cp`; no Docker, no Apache mirrors.
#
# Owns: fetching the server classpaths (devstack/{cassandra,kafka}/pom.xml), rendering their
# configs from the templates beside this script, starting/stopping the servers in the background
# and the run directory .devstack/ at the repo root (lib/, conf/, data/, server.log, server.pid per
# server). tests/integration/servers.py drives this script when no server is given or running.
# Facts behind every flag: java-servers.md in the shared reference notes beside the repository.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT

# --- configuration (environment) -----------------------------------------------------------------
readonly RUN_ROOT="${DEVSTACK_DIR:-${REPO_ROOT}/.devstack}"
readonly HOST="${DEVSTACK_HOST:-127.0.0.1}"
readonly CQL_PORT="${DEVSTACK_CQL_PORT:-9042}"
readonly STORAGE_PORT="${DEVSTACK_CASSANDRA_STORAGE_PORT:-7000}"
readonly KAFKA_PORT="${DEVSTACK_KAFKA_PORT:-9092}"
readonly CONTROLLER_PORT="${DEVSTACK_KAFKA_CONTROLLER_PORT:-9093}"
# JMX on loopback only (cassandra.jmx.local.port), for devstack/nodetool.sh (compact, flush,
# tablestats); set it empty to turn JMX off.
readonly CASSANDRA_JMX_PORT="${DEVSTACK_CASSANDRA_JMX_PORT-7199}"
# 2 GB at most: with 1 GB, a 100k-vector SAI index (bench/similar.py) left the old generation
# near 870 MB after full GCs and requests timed out; the tests alone stay far below either.
readonly CASSANDRA_HEAP="${DEVSTACK_CASSANDRA_HEAP:--Xms1G -Xmx2G}"
readonly KAFKA_HEAP="${DEVSTACK_KAFKA_HEAP:--Xms256m -Xmx512m}"
readonly START_TIMEOUT="${DEVSTACK_START_TIMEOUT:-240}"
readonly STOP_TIMEOUT="${DEVSTACK_STOP_TIMEOUT:-30}"
readonly PYTHON="${DEVSTACK_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
# The cluster mode (devstack/cluster.sh) runs this script once per node with its own templates
# and the values below; their defaults are the single node's.
readonly CASSANDRA_YAML_IN="${DEVSTACK_CASSANDRA_YAML:-${SCRIPT_DIR}/cassandra/cassandra.yaml.in}"
readonly KAFKA_PROPERTIES_IN="${DEVSTACK_KAFKA_PROPERTIES:-${SCRIPT_DIR}/kafka/server.properties.in}"
readonly NODE_ID="${DEVSTACK_NODE_ID:-1}"
readonly CASSANDRA_SEEDS="${DEVSTACK_CASSANDRA_SEEDS:-${HOST}:${STORAGE_PORT}}"
readonly CASSANDRA_INITIAL_TOKEN="${DEVSTACK_CASSANDRA_INITIAL_TOKEN:-}"
readonly CASSANDRA_JVM_EXTRA="${DEVSTACK_CASSANDRA_JVM_EXTRA:-}"
# Skip fsync of the system keyspaces (faster schema changes in tests). The cluster turns it off:
# its nodes are SIGKILLed on purpose, and a node that loses its schema tables that way comes
# back without the keyspaces created since it started ("keyspace ... does not exist").
readonly CASSANDRA_UNSAFESYSTEM="${DEVSTACK_CASSANDRA_UNSAFESYSTEM:-true}"
readonly KAFKA_VOTERS="${DEVSTACK_KAFKA_VOTERS:-${NODE_ID}@${HOST}:${CONTROLLER_PORT}}"
readonly JAVA="${JAVA:-java}"
readonly MVN="${MVN:-mvn}"
readonly DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
readonly SERVERS=(cassandra kafka)

usage() {
  cat <<EOF
Usage: devstack/devstack.sh COMMAND [SERVER]
       devstack/devstack.sh COMMAND cluster [NODE]   (three of each: devstack/cluster.sh help)

Real single-node Cassandra 5.0 and Kafka 3.9 (KRaft) on ${HOST}, run from ${RUN_ROOT}.

Commands:
  fetch [SERVER|all]       download the server jars into .devstack/SERVER/lib (skipped when present
                           and the pom is unchanged; DEVSTACK_REFETCH=1 forces)
  start [SERVER|all]       fetch if needed, start in the background, wait until ready and print
                           the start-up time; reports and does nothing when already running
  stop [SERVER|all]        SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s
  restart [SERVER|all]     stop, then start
  reset [SERVER|all]       stop and wipe the data (keeps the jars)
  status [SERVER|all]      running/stopped with pid and port; exit 3 when any is stopped
  logs SERVER [-f|LINES]   tail the server log (default 100 lines; -f follows)
  help                     this message

SERVER is cassandra or kafka; the default is all.

Environment (defaults):
  DEVSTACK_DIR=${RUN_ROOT}
  DEVSTACK_HOST=${HOST}
  DEVSTACK_CQL_PORT=${CQL_PORT}   DEVSTACK_CASSANDRA_STORAGE_PORT=${STORAGE_PORT}
  DEVSTACK_KAFKA_PORT=${KAFKA_PORT}   DEVSTACK_KAFKA_CONTROLLER_PORT=${CONTROLLER_PORT}
  DEVSTACK_CASSANDRA_JMX_PORT=${CASSANDRA_JMX_PORT:-<empty: JMX off>}
  DEVSTACK_CASSANDRA_HEAP="${CASSANDRA_HEAP}"   DEVSTACK_KAFKA_HEAP="${KAFKA_HEAP}"
  DEVSTACK_START_TIMEOUT=${START_TIMEOUT}   DEVSTACK_STOP_TIMEOUT=${STOP_TIMEOUT}
  DEVSTACK_PYTHON=${PYTHON}  (used for a cassandra-driver readiness query when present)
EOF
}

# --- helpers -------------------------------------------------------------------------------------
log() { printf '%s\n' "$*"; }
die() { printf 'devstack: error: %s\n' "$*" >&2; exit 1; }

run_dir() { printf '%s/%s' "${RUN_ROOT}" "$1"; }
pid_file() { printf '%s/server.pid' "$(run_dir "$1")"; }
log_file() { printf '%s/server.log' "$(run_dir "$1")"; }

main_class() {
  case "$1" in
    cassandra) printf 'org.apache.cassandra.service.CassandraDaemon' ;;
    kafka) printf 'kafka.Kafka' ;;
    *) die "unknown server: $1" ;;
  esac
}

client_port() {
  case "$1" in
    cassandra) printf '%s' "${CQL_PORT}" ;;
    kafka) printf '%s' "${KAFKA_PORT}" ;;
    *) die "unknown server: $1" ;;
  esac
}

# Seconds since the epoch with microseconds, from bash itself (no bc/date forks).
now_us() { local t="${EPOCHREALTIME/./}"; printf '%s' "$((10#${t}))"; }
elapsed() { # elapsed START_US -> "12.3"
  local d=$(( $(now_us) - $1 ))
  printf '%d.%d' "$((d / 1000000))" "$(((d % 1000000) / 100000))"
}

# Expand "all" (or nothing) into the server list; reject unknown names.
servers_for() {
  local which="${1:-all}"
  case "${which}" in
    all) printf '%s\n' "${SERVERS[@]}" ;;
    cassandra | kafka) printf '%s\n' "${which}" ;;
    *) usage >&2; die "unknown server: ${which}" ;;
  esac
}

# Pid of the running server, or nothing. A pid file whose process is gone or is not our java
# main class (pid reuse) is stale and removed.
running_pid() {
  local server="$1" pf pid
  pf="$(pid_file "${server}")"
  [[ -f "${pf}" ]] || return 0
  pid="$(<"${pf}")"
  if [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2>/dev/null \
    && tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "$(main_class "${server}")"; then
    printf '%s' "${pid}"
  else
    rm -f "${pf}"
  fi
}

port_open() { # port_open PORT: something accepts TCP connections on HOST:PORT
  (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

# Serialise fetch/start/stop/reset of one server across concurrent callers (parallel pytest
# sessions). The lock is fd 9; the servers are launched with 9>&- so they do not inherit it.
with_lock() {
  local server="$1"; shift
  local lock
  lock="$(run_dir "${server}")/devstack.lock"
  mkdir -p "$(dirname "${lock}")"
  (
    flock -w "$((START_TIMEOUT + STOP_TIMEOUT))" 9 || die "timed out waiting for ${lock}"
    "$@"
  ) 9>"${lock}"
}

classpath() {
  local lib cp
  lib="$(run_dir "$1")/lib"
  cp="$(printf '%s:' "${lib}"/*.jar)"
  printf '%s' "${cp%:}"
}

# Replace the @NAME@ placeholders of a template.
render() { # render TEMPLATE OUTPUT RUN_DIR
  sed -e "s|@RUN_DIR@|$3|g" -e "s|@HOST@|${HOST}|g" \
    -e "s|@CQL_PORT@|${CQL_PORT}|g" -e "s|@STORAGE_PORT@|${STORAGE_PORT}|g" \
    -e "s|@KAFKA_PORT@|${KAFKA_PORT}|g" -e "s|@CONTROLLER_PORT@|${CONTROLLER_PORT}|g" \
    -e "s|@NODE_ID@|${NODE_ID}|g" -e "s|@SEEDS@|${CASSANDRA_SEEDS}|g" \
    -e "s|@INITIAL_TOKEN@|${CASSANDRA_INITIAL_TOKEN}|g" -e "s|@VOTERS@|${KAFKA_VOTERS}|g" \
    "$1" >"$2.tmp"
  mv "$2.tmp" "$2"
}

dump_log_tail() {
  local lf
  lf="$(log_file "$1")"
  [[ -f "${lf}" ]] || return 0
  printf -- '--- last 60 lines of %s ---\n' "${lf}" >&2
  tail -n 60 "${lf}" >&2
  printf -- '--- end of %s ---\n' "${lf}" >&2
}

# --- fetch ---------------------------------------------------------------------------------------
fetch_one() {
  local server="$1" dir pom lib stamp want t0
  dir="$(run_dir "${server}")"
  pom="${SCRIPT_DIR}/${server}/pom.xml"
  lib="${dir}/lib"
  stamp="${lib}/.pom.sha256"
  want="$(sha256sum "${pom}" | cut -d' ' -f1)"
  if [[ "${DEVSTACK_REFETCH:-0}" != 1 && -f "${stamp}" && "$(<"${stamp}")" == "${want}" ]]; then
    log "${server}: jars present ($(du -shL "${lib}" | cut -f1) in ${lib}), skipping fetch"
    return 0
  fi
  command -v "${MVN}" >/dev/null || die "maven (${MVN}) not found"
  if [[ -n "$(running_pid "${server}")" ]]; then
    die "${server}: is running from ${lib}; stop it before fetching again"
  fi
  log "${server}: fetching jars from Maven Central into ${lib} ..."
  t0="$(now_us)"
  mkdir -p "${dir}"
  rm -rf "${lib}.tmp"
  # -Djmc*/visualvm.path: unused system-scoped deps in cassandra-parent (CASSANDRA-16391);
  # without them Maven prints harmless [ERROR] lines about systemPath.
  "${MVN}" -q -B -Dstyle.color=never -f "${pom}" \
    -Djmc5.path=/tmp -Djmc6.path=/tmp -Dvisualvm.path=/tmp \
    "${DEP_PLUGIN}:copy-dependencies" -DincludeScope=runtime -DoutputDirectory="${lib}.tmp" \
    >"${dir}/fetch.log" 2>&1 \
    || { cat "${dir}/fetch.log" >&2; die "${server}: mvn copy-dependencies failed"; }
  printf '%s\n' "${want}" >"${lib}.tmp/.pom.sha256"
  rm -rf "${lib}"
  mv "${lib}.tmp" "${lib}"
  log "${server}: fetched $(find "${lib}" -name '*.jar' | wc -l) jars, $(du -shL "${lib}" | cut -f1), in $(elapsed "${t0}")s"
}

# --- cassandra -----------------------------------------------------------------------------------
cassandra_launch() {
  local dir cp jamm jmx=() extra=()
  dir="$(run_dir cassandra)"
  mkdir -p "${dir}/conf" "${dir}/data" "${dir}/logs" "${dir}/tmp" "${dir}/triggers"
  render "${CASSANDRA_YAML_IN}" "${dir}/conf/cassandra.yaml" "${dir}"
  cp "${SCRIPT_DIR}/cassandra/logback.xml" "${dir}/conf/logback.xml"
  cp="$(classpath cassandra)"
  jamm="$(compgen -G "${dir}/lib/jamm-*.jar" | head -n 1)" || die "cassandra: jamm jar missing from ${dir}/lib"
  if [[ -n "${CASSANDRA_JMX_PORT}" ]]; then
    jmx=("-Dcassandra.jmx.local.port=${CASSANDRA_JMX_PORT}")
  fi
  # shellcheck disable=SC2206 # a list of JVM flags, split on purpose.
  extra=(${CASSANDRA_JVM_EXTRA})
  # shellcheck disable=SC2086 # CASSANDRA_HEAP is a list of JVM flags, split on purpose.
  setsid "${JAVA}" \
    ${CASSANDRA_HEAP} -Xss256k \
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m \
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 \
    -XX:InitiatingHeapOccupancyPercent=70 \
    -ea -da:net.openhft... -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError \
    -XX:HeapDumpPath="${dir}/logs" -XX:+ExitOnOutOfMemoryError -XX:+UseTLAB -XX:+ResizeTLAB \
    -XX:+PerfDisableSharedMem -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true \
    -Djdk.attach.allowAttachSelf=true \
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
    --add-exports java.management/com.sun.jmx.remote.security=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
    --add-exports java.sql/java.sql=ALL-UNNAMED \
    --add-exports java.base/java.lang.ref=ALL-UNNAMED \
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
    --add-opens java.base/java.lang.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens java.base/java.io=ALL-UNNAMED \
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    --add-opens java.base/java.nio=ALL-UNNAMED \
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
    -Dio.netty.allocator.maxOrder=11 \
    -javaagent:"${jamm}" \
    -Djava.io.tmpdir="${dir}/tmp" -Djna.tmpdir="${dir}/tmp" \
    "${jmx[@]}" "${extra[@]}" \
    -Dcassandra-foreground=yes \
    -Dcassandra.config="file://${dir}/conf/cassandra.yaml" \
    -Dcassandra.storagedir="${dir}/data" \
    -Dcassandra.logdir="${dir}/logs" \
    -Dcassandra.triggers_dir="${dir}/triggers" \
    -Dlogback.configurationFile="${dir}/conf/logback.xml" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.unsafesystem="${CASSANDRA_UNSAFESYSTEM}" \
    -cp "${cp}" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >"$(log_file cassandra)" 2>&1 9>&- &
  printf '%s\n' "$!" >"$(pid_file cassandra)"
}

# Ready: the log says "Startup complete", the CQL port accepts connections and, when the project
# venv has cassandra-driver, a real query answers.
cassandra_ready() {
  grep -qs 'Startup complete' "$(log_file cassandra)" || return 1
  port_open "${CQL_PORT}" || return 1
  [[ -x "${PYTHON}" ]] || return 0
  "${PYTHON}" - "${HOST}" "${CQL_PORT}" <<'PY' >/dev/null 2>&1
import importlib.util
import sys

if importlib.util.find_spec("cassandra") is None:
    sys.exit(0)
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy

profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1"))
cluster = Cluster([sys.argv[1]], port=int(sys.argv[2]), connect_timeout=5,
                  execution_profiles={EXEC_PROFILE_DEFAULT: profile})
try:
    cluster.connect().execute("SELECT release_version FROM system.local", timeout=5).one()
finally:
    cluster.shutdown()
PY
}

# --- kafka ---------------------------------------------------------------------------------------
kafka_log_opts() {
  local dir="$1"
  printf '%s\n' "-Dlog4j.configuration=file:${dir}/config/log4j.properties" \
    "-Dlog4j2.configurationFile=${dir}/config/log4j2.properties"
}

kafka_launch() {
  local dir cp cid logopts=()
  dir="$(run_dir kafka)"
  mkdir -p "${dir}/config" "${dir}/data" "${dir}/logs"
  render "${KAFKA_PROPERTIES_IN}" "${dir}/config/server.properties" "${dir}"
  cp "${SCRIPT_DIR}/kafka/log4j.properties" "${SCRIPT_DIR}/kafka/log4j2.properties" "${dir}/config/"
  cp="$(classpath kafka)"
  mapfile -t logopts < <(kafka_log_opts "${dir}")
  # Format the KRaft storage once; the cluster id lives beside the data.
  if [[ ! -f "${dir}/data/meta.properties" ]]; then
    if [[ ! -s "${dir}/cluster.id" ]]; then
      "${JAVA}" -cp "${cp}" "${logopts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null \
        | tail -n 1 >"${dir}/cluster.id"
    fi
    cid="$(<"${dir}/cluster.id")"
    [[ -n "${cid}" ]] || die "kafka: could not generate a cluster id"
    log "kafka: formatting storage in ${dir}/data (cluster id ${cid})"
    "${JAVA}" -cp "${cp}" "${logopts[@]}" kafka.tools.StorageTool format \
      -t "${cid}" -c "${dir}/config/server.properties" --ignore-formatted >"${dir}/format.log" 2>&1 \
      || { cat "${dir}/format.log" >&2; die "kafka: storage format failed"; }
  fi
  # shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM flags, split on purpose.
  setsid "${JAVA}" ${KAFKA_HEAP} -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.io.tmpdir="${dir}/logs" \
    -Dkafka.logs.dir="${dir}/logs" "${logopts[@]}" \
    -cp "${cp}" kafka.Kafka "${dir}/config/server.properties" \
    </dev/null >"$(log_file kafka)" 2>&1 9>&- &
  printf '%s\n' "$!" >"$(pid_file kafka)"
}

kafka_ready() {
  grep -qs 'Kafka Server started' "$(log_file kafka)" && port_open "${KAFKA_PORT}"
}

# --- commands ------------------------------------------------------------------------------------
start_one() {
  local server="$1" pid port lf t0
  port="$(client_port "${server}")"
  pid="$(running_pid "${server}")"
  if [[ -n "${pid}" ]]; then
    log "${server}: already running (pid ${pid}, ${HOST}:${port})"
    return 0
  fi
  if port_open "${port}"; then
    die "${server}: ${HOST}:${port} is already taken by another process (not this devstack); stop it or set the port variable (see --help)"
  fi
  fetch_one "${server}"
  lf="$(log_file "${server}")"
  if [[ -f "${lf}" ]]; then
    mv -f "${lf}" "${lf}.prev"
  fi
  t0="$(now_us)"
  "${server}_launch"
  pid="$(<"$(pid_file "${server}")")"
  log "${server}: starting (pid ${pid}, log ${lf}) ..."
  while ! "${server}_ready"; do
    if ! kill -0 "${pid}" 2>/dev/null; then
      rm -f "$(pid_file "${server}")"
      dump_log_tail "${server}"
      die "${server}: exited during start-up (see ${lf})"
    fi
    if (( $(now_us) - t0 > START_TIMEOUT * 1000000 )); then
      dump_log_tail "${server}"
      stop_one "${server}"
      die "${server}: not ready after ${START_TIMEOUT}s (see ${lf})"
    fi
    sleep 0.5
  done
  log "${server}: ready on ${HOST}:${port} (pid ${pid}), started in $(elapsed "${t0}")s"
}

stop_one() {
  local server="$1" pid waited=0
  pid="$(running_pid "${server}")"
  if [[ -z "${pid}" ]]; then
    log "${server}: not running"
    return 0
  fi
  log "${server}: stopping (pid ${pid}) ..."
  kill -TERM "${pid}" 2>/dev/null || true
  while kill -0 "${pid}" 2>/dev/null; do
    if (( waited >= STOP_TIMEOUT * 2 )); then
      log "${server}: still up after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      break
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  rm -f "$(pid_file "${server}")"
  log "${server}: stopped"
}

reset_one() {
  local server="$1" dir
  stop_one "${server}"
  dir="$(run_dir "${server}")"
  rm -rf "${dir}/data" "${dir}/logs" "${dir}/tmp" "${dir}/triggers" "${dir}/cluster.id" "${dir}/format.log" \
    "$(log_file "${server}")" "$(log_file "${server}").prev"
  log "${server}: data wiped (jars kept in ${dir}/lib)"
}

status_one() {
  local server="$1" pid port
  port="$(client_port "${server}")"
  pid="$(running_pid "${server}")"
  if [[ -n "${pid}" ]]; then
    if port_open "${port}"; then
      log "${server}: running (pid ${pid}, ${HOST}:${port})"
    else
      log "${server}: starting or unhealthy (pid ${pid}, ${HOST}:${port} not answering)"
    fi
    return 0
  fi
  log "${server}: stopped"
  return 3
}

cmd_status() {
  local server servers rc=0
  servers="$(servers_for "$1")"
  for server in ${servers}; do
    status_one "${server}" || rc=$?
  done
  return "${rc}"
}

cmd_logs() {
  local server="${1:-}" arg="${2:-100}" lf
  [[ "${server}" == cassandra || "${server}" == kafka ]] || { usage >&2; die "logs needs a SERVER"; }
  lf="$(log_file "${server}")"
  [[ -f "${lf}" ]] || die "${server}: no log at ${lf}"
  if [[ "${arg}" == -f ]]; then
    exec tail -n 100 -F "${lf}"
  fi
  [[ "${arg}" =~ ^[0-9]+$ ]] || die "logs: LINES must be a number or -f"
  tail -n "${arg}" "${lf}"
}

# Run FUNCTION for each server under that server's lock. The first failure ends the script:
# calling it as `cmd || ...` would switch errexit off inside it.
for_each_locked() { # for_each_locked FUNCTION [SERVER|all]
  local fn="$1" server servers
  servers="$(servers_for "${2:-all}")"
  for server in ${servers}; do
    with_lock "${server}" "${fn}" "${server}"
  done
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  if [[ "${1:-}" == cluster ]]; then
    shift
    exec "${SCRIPT_DIR}/cluster.sh" "${cmd}" "$@"
  fi
  case "${cmd}" in
    fetch) for_each_locked fetch_one "${1:-all}" ;;
    start) for_each_locked start_one "${1:-all}" ;;
    stop) for_each_locked stop_one "${1:-all}" ;;
    restart)
      for_each_locked stop_one "${1:-all}"
      for_each_locked start_one "${1:-all}"
      ;;
    reset) for_each_locked reset_one "${1:-all}" ;;
    status) cmd_status "${1:-all}" ;;
    logs) cmd_logs "$@" ;;
    help | -h | --help) usage ;;
    "") usage >&2; exit 2 ;;
    *) usage >&2; die "unknown command: ${cmd}" ;;
  esac
}

main "$@"
