#!/usr/bin/env bash
# devstack-server - PID 1 of the local Cassandra/Kafka images: devstack.sh starts ${SERVER} bound
# to this container's address (clients on the compose network reach it by service name; it
# advertises that address), the log goes to stdout, SIGTERM stops it the way devstack does
# (SIGTERM, then SIGKILL after DEVSTACK_STOP_TIMEOUT), and the container exits when it does.
set -euo pipefail
readonly DEVSTACK=/opt/devstack/devstack/devstack.sh
addr="$(hostname -i 2>/dev/null | awk '{print $1}')"
[[ -n "${addr}" ]] || addr="$(getent hosts "$(cat /etc/hostname)" | awk '{print $1; exit}')"
export DEVSTACK_HOST="${DEVSTACK_HOST:-${addr}}"
# A cold JVM on a busy 2-core box; compose's healthcheck decides readiness, not this.
export DEVSTACK_START_TIMEOUT="${DEVSTACK_START_TIMEOUT:-600}"
# The official images' heap variables, when set.
if [[ "${SERVER}" == cassandra && -n "${MAX_HEAP_SIZE:-}" ]]; then
  export DEVSTACK_CASSANDRA_HEAP="-Xms${MAX_HEAP_SIZE} -Xmx${MAX_HEAP_SIZE}"
fi

stopping=0
stop() { stopping=1; "${DEVSTACK}" stop "${SERVER}" || true; }
trap stop TERM INT

log="${DEVSTACK_DIR}/${SERVER}/server.log"
mkdir -p "$(dirname "${log}")"
: >"${log}"
tail -n +1 -F "${log}" 2>/dev/null &
"${DEVSTACK}" start "${SERVER}" &
wait $! || { [[ ${stopping} == 1 ]] && exit 0; exit 1; }
pid="$(cat "${DEVSTACK_DIR}/${SERVER}/server.pid")"
while kill -0 "${pid}" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
[[ ${stopping} == 1 ]] && exit 0
echo "devstack-server: ${SERVER} exited" >&2
exit 1
