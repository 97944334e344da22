#!/bin/bash
# Create segflow's topics from $TOPICS_FILE (idempotent: --if-not-exists), then list them.
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
TOPICS_FILE="${TOPICS_FILE:-/etc/segflow/topics.txt}"
REPLICATION="${REPLICATION:-1}"
kt="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"

while read -r name partitions configs; do
  [[ -z "${name}" || "${name}" == \#* ]] && continue
  args=()
  for c in ${configs}; do args+=(--config "${c}"); done
  "${kt}" --bootstrap-server "${BOOTSTRAP}" --create --if-not-exists --topic "${name}" \
    --partitions "${partitions}" --replication-factor "${REPLICATION}" "${args[@]}"
done < "${TOPICS_FILE}"
"${kt}" --bootstrap-server "${BOOTSTRAP}" --list
