-- Candidate allow rules (intents). Re-emitting an id with a higher version replaces it
-- (new evidence, status change). Read with FINAL.
CREATE TABLE IF NOT EXISTS candidate_rules
(
    id             String,
    app            String,                  -- protected workload 'ns/app'
    namespace      LowCardinality(String),
    direction      LowCardinality(String),  -- ingress | egress
    peer_kind      LowCardinality(String),  -- workload | cidr | world
    peer           String,                  -- human text: 'ns/app', a CIDR or 'world'
    peer_namespace String,
    peer_app       String,
    peer_detail    String CODEC(ZSTD(3)),   -- the event's peer object as JSON (selector, except)
    proto          UInt8,
    ports          Array(UInt16),
    flows          UInt64,
    bytes          UInt64,
    first_seen     DateTime64(3, 'UTC'),
    last_seen      DateTime64(3, 'UTC'),
    days_observed  UInt16,
    confidence     Float32,
    status         LowCardinality(String),  -- proposed | accepted | rejected
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY id;
