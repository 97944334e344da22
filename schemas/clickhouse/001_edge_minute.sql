-- Per-minute edge aggregates from the core (one row per edge, minute, input block).
-- Idempotent under replay: the same (edge, minute, source_id, block) written again
-- replaces the earlier row (highest version wins); a different block adds to the sum.
-- ReplacingMergeTree collapses only on merge: read with FINAL (or argMax by version).
CREATE TABLE IF NOT EXISTS edge_minute
(
    minute          DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    src_namespace   LowCardinality(String),
    src_app         LowCardinality(String),
    dst_namespace   LowCardinality(String),
    dst_app         LowCardinality(String),
    src_kind        LowCardinality(String),
    dst_kind        LowCardinality(String),
    service_port    UInt16,
    proto           UInt8,
    phase           LowCardinality(String),   -- 'audit' | 'enforce'
    flows           UInt64 CODEC(T64, ZSTD(1)),
    bytes           UInt64 CODEC(T64, ZSTD(1)),
    packets         UInt64 CODEC(T64, ZSTD(1)),
    rejected_flows  UInt64 CODEC(T64, ZSTD(1)),
    violating_flows UInt64 CODEC(T64, ZSTD(1)),
    source_id       LowCardinality(String),   -- file path or topic/partition
    block           UInt64 CODEC(T64, ZSTD(1)),  -- deterministic input block number
    version         UInt64 CODEC(T64, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(minute)
ORDER BY (src_namespace, src_app, dst_namespace, dst_app, service_port, proto, minute, source_id, block);
