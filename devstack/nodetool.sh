#!/usr/bin/env bash
# nodetool against the devstack Cassandra, from the same Maven Central jars.
#
#   DEVSTACK_CASSANDRA_JMX_PORT=7199 devstack/devstack.sh start cassandra   # JMX is off by default
#   devstack/nodetool.sh tablestats KEYSPACE.TABLE
#   devstack/nodetool.sh compact KEYSPACE TABLE
#
# nodetool is a JMX client; the jars' FileUtils needs the same module openings as the server
# (Cassandra's jvm17-clients.options), which the upstream bin/nodetool script would pass.
set -euo pipefail
readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly RUN_ROOT="${DEVSTACK_DIR:-$(dirname "${SCRIPT_DIR}")/.devstack}"
readonly HOST="${DEVSTACK_HOST:-127.0.0.1}"
readonly JMX_PORT="${DEVSTACK_CASSANDRA_JMX_PORT:-7199}"
[[ -d "${RUN_ROOT}/cassandra/lib" ]] || { echo "nodetool: no jars in ${RUN_ROOT}/cassandra/lib: run devstack/devstack.sh start cassandra first" >&2; exit 1; }
mkdir -p "${RUN_ROOT}/nodetool"
exec "${JAVA:-java}" -Xmx256m \
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
  --add-exports java.base/jdk.internal.ref=ALL-UNNAMED \
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
  --add-exports java.base/sun.nio.ch=ALL-UNNAMED \
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
  --add-opens java.base/java.nio=ALL-UNNAMED \
  --add-opens java.base/java.lang=ALL-UNNAMED \
  -Dcassandra.storagedir="${RUN_ROOT}/nodetool" \
  -Dlogback.configurationFile="${SCRIPT_DIR}/cassandra/logback.xml" \
  -cp "${RUN_ROOT}/cassandra/lib/*" org.apache.cassandra.tools.NodeTool \
  -h "${HOST}" -p "${JMX_PORT}" "$@"
