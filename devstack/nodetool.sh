#!/usr/bin/env bash
# Cassandra's nodetool against a devstack node, from the same Maven Central jars; the one
# launcher for the single node and for the cluster's nodes (`cluster.sh nodetool N ...`).
#
#   devstack/devstack.sh start cassandra        # JMX on 127.0.0.1:7199 by default
#   devstack/nodetool.sh tablestats KEYSPACE.TABLE
#   devstack/nodetool.sh compact KEYSPACE TABLE
#
# nodetool is a JMX client, but the jars' FileUtils needs the same module openings as the
# server at class load (upstream's bin/nodetool passes them from jvm17-clients.options).
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
# Where the node's jars, logs and tmp are (the cluster passes a node's directory).
readonly NODE_DIR="${DEVSTACK_NODETOOL_NODE_DIR:-${DEVSTACK_DIR:-$(dirname "${SCRIPT_DIR}")/.devstack}/cassandra}"
readonly JMX_PORT="${DEVSTACK_CASSANDRA_JMX_PORT:-7199}"
[[ -d "${NODE_DIR}/lib" ]] || {
  echo "nodetool: no jars in ${NODE_DIR}/lib: start the node first (devstack.sh start cassandra, or cluster.sh start)" >&2
  exit 1
}
mkdir -p "${NODE_DIR}/logs" "${NODE_DIR}/tmp"
cp="$(printf '%s:' "${NODE_DIR}"/lib/*.jar)"
exec "${JAVA:-java}" -XX:+UseSerialGC -Xmx256m \
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
  --add-exports java.base/jdk.internal.ref=ALL-UNNAMED \
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
  --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.nio=ALL-UNNAMED \
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.io=ALL-UNNAMED \
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
  -Dlogback.configurationFile="${SCRIPT_DIR}/cassandra/logback.xml" \
  -Dcassandra.logdir="${NODE_DIR}/logs" \
  -Djava.io.tmpdir="${NODE_DIR}/tmp" \
  -cp "${cp%:}" org.apache.cassandra.tools.NodeTool \
  -h 127.0.0.1 -p "${JMX_PORT}" "$@"
