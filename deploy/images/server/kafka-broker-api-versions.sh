#!/bin/sh
# The Kafka distribution's readiness tool at the path the official image has it (compose's
# healthcheck calls it): a real ApiVersions round trip, run from the broker's own jars.
exec java -Xmx64m -XX:TieredStopAtLevel=1 -cp "/opt/devstack/run/kafka/lib/*" \
  kafka.admin.BrokerApiVersionsCommand "$@"
