-- Runstream schema v4: last-write-wins for metric points, and summaries that agree with history.
--
-- 1. Every point gets a version, (receive time, client seq, position in its batch) packed into a
--    UInt128, and the metrics table becomes ReplacingMergeTree(version): of several points with
--    the same identity (run, kind, key, rank, step), reads with FINAL and merges keep the one
--    sent last (writers/store.py states the rule). Writers insert the two parts of the version
--    through EPHEMERAL columns (not stored); rows without them (older rows, tools) get version 0
--    and lose to any versioned write of the same point.
-- 2. metric_summaries: `last` is the value at the highest step, the point history shows (the
--    view aggregates by step alone: by (step, version) it cost ~80% more per insert, measured; a
--    block that re-logs a stored step, or repeats a step, gets its series' summary replaced
--    exactly by the writer, so ties never decide `last`); min/max are over finite values only
--    and NULL when a series has none (the old minIf/maxIf stored 0 for a block of only NaN/inf). The view adds up inserted rows; when a
--    write may have replaced stored points, the writer replaces the series' summary rows by its
--    exact summary (writers/replaced_points.py), so count = distinct points, as history shows.
-- 3. Existing data is copied: metrics keep their rows (version 0), the summaries are recomputed
--    from `metrics FINAL`, so old 0-for-NaN summaries and double counts are corrected. Cost: one
--    full read and write of the metrics table (seconds per hundred million points on one core,
--    and twice the table's disk space until the old copy is dropped); small tables take
--    milliseconds. The rollups are left as they are (their min/max already skip NaN).
-- Not atomic: run it while no writer is running (the server migrates before it starts writers).

DROP VIEW IF EXISTS {db}.metric_summaries_mv
;;
DROP VIEW IF EXISTS {db}.metric_rollups_mv
;;
CREATE TABLE {db}.metrics_v4
(
    project  LowCardinality(String),
    run_id   String,
    kind     Enum8('user' = 1, 'system' = 2),
    key      LowCardinality(String),
    rank     UInt16,
    step     Int64,
    time_ms  Int64,
    value    Float64 CODEC(Gorilla, ZSTD(1)),
    received_ms Int64 EPHEMERAL COMMENT 'when ingest accepted the point (unix ms)',
    send_order  UInt64 EPHEMERAL COMMENT 'client seq << 20 | position of the point in its batch',
    version  UInt128 DEFAULT bitOr(bitShiftLeft(toUInt128(received_ms), 64), toUInt128(send_order))
             CODEC(ZSTD(1)) COMMENT 'the highest version of a point wins (last write)'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, run_id, kind, key, rank, step)
SETTINGS non_replicated_deduplication_window = 100000
;;
INSERT INTO {db}.metrics_v4 (project, run_id, kind, key, rank, step, time_ms, value)
SELECT project, run_id, kind, key, rank, step, time_ms, value FROM {db}.metrics
SETTINGS insert_deduplicate = 0
;;
RENAME TABLE {db}.metrics TO {db}.metrics_v3, {db}.metrics_v4 TO {db}.metrics
;;
DROP TABLE {db}.metrics_v3
;;
CREATE TABLE {db}.metric_summaries_v4
(
    project    LowCardinality(String),
    run_id     String,
    kind       Enum8('user' = 1, 'system' = 2),
    key        LowCardinality(String),
    last       AggregateFunction(argMax, Float64, Int64) COMMENT 'value at the highest step (see the header)',
    min        SimpleAggregateFunction(min, Nullable(Float64)) COMMENT 'smallest finite value; NULL when none',
    max        SimpleAggregateFunction(max, Nullable(Float64)) COMMENT 'largest finite value; NULL when none',
    count      SimpleAggregateFunction(sum, Int64) COMMENT 'distinct points (see the header)',
    last_step  SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, kind, key)
SETTINGS non_replicated_deduplication_window = 100000
;;
INSERT INTO {db}.metric_summaries_v4
SELECT project, run_id, kind, key,
       argMaxState(value, step) AS last,
       minIfOrNull(value, isFinite(value)) AS min,
       maxIfOrNull(value, isFinite(value)) AS max,
       toInt64(count()) AS count,
       max(step) AS last_step
FROM {db}.metrics FINAL
GROUP BY project, run_id, kind, key
SETTINGS insert_deduplicate = 0
;;
RENAME TABLE {db}.metric_summaries TO {db}.metric_summaries_v3, {db}.metric_summaries_v4 TO {db}.metric_summaries
;;
DROP TABLE {db}.metric_summaries_v3
;;
CREATE MATERIALIZED VIEW {db}.metric_summaries_mv TO {db}.metric_summaries AS
SELECT project, run_id, kind, key,
       argMaxState(value, step) AS last,
       minIfOrNull(value, isFinite(value)) AS min,
       maxIfOrNull(value, isFinite(value)) AS max,
       toInt64(count()) AS count,
       max(step) AS last_step
FROM {db}.metrics
GROUP BY project, run_id, kind, key
;;
CREATE MATERIALIZED VIEW {db}.metric_rollups_mv TO {db}.metric_rollups AS
SELECT project, run_id, kind, key, rank,
       intDiv(step, 32) AS bucket,
       count() AS count,
       min(step) AS first_step,
       max(step) AS last_step,
       min(time_ms) AS first_ms,
       max(time_ms) AS last_ms,
       min(if(isNaN(value), inf, value)) AS lo,
       max(if(isNaN(value), -inf, value)) AS hi
FROM {db}.metrics
GROUP BY project, run_id, kind, key, rank, bucket
