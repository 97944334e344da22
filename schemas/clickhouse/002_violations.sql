-- Baseline violation events. An id keeps its ts forever, so re-emitting an id with a
-- higher version (count, last_seen grown) replaces it. Read with FINAL.
CREATE TABLE IF NOT EXISTS violations
(
    id            String,
    ts            DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    type          LowCardinality(String),   -- new_edge | new_port | scan | volume_spike | off_hours
    severity      LowCardinality(String),   -- low | medium | high | critical
    score         UInt8,
    src_ip        String,
    dst_ip        String,
    dst_port      UInt16,
    proto         UInt8,
    src_namespace LowCardinality(String),
    src_app       LowCardinality(String),
    dst_namespace LowCardinality(String),
    dst_app       LowCardinality(String),
    mode          LowCardinality(String),   -- audit | enforce
    reason        String CODEC(ZSTD(3)),
    evidence      String CODEC(ZSTD(3)),    -- JSON object text
    count         UInt64,
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    detector      LowCardinality(String),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(ts)
ORDER BY (type, id);
