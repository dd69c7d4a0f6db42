-- Runstream schema v3: a coarse pre-aggregation of metric points for fast downsampled charts.
-- Every 32 consecutive steps of a series (project, run, kind, key, rank) become one row holding
-- the min and max value and the step/time span. The query service reads these rows instead of
-- the raw points when a series is long compared to the requested number of points
-- (100 runs x 100,000 steps -> 312,500 rows instead of 10,000,000). Min/max are idempotent,
-- so duplicate inserts never change a chart; `count` may over-count duplicates (display only).
-- NaN values are stored as +inf in `lo` and -inf in `hi`, so a bucket holding only NaN has
-- lo > hi and is skipped by readers.

CREATE TABLE IF NOT EXISTS {db}.metric_rollups
(
    project     LowCardinality(String),
    run_id      String,
    kind        Enum8('user' = 1, 'system' = 2),
    key         LowCardinality(String),
    rank        UInt16,
    bucket      Int64 COMMENT 'intDiv(step, 32)',
    count       SimpleAggregateFunction(sum, UInt64),
    first_step  SimpleAggregateFunction(min, Int64),
    last_step   SimpleAggregateFunction(max, Int64),
    first_ms    SimpleAggregateFunction(min, Int64),
    last_ms     SimpleAggregateFunction(max, Int64),
    lo          SimpleAggregateFunction(min, Float64),
    hi          SimpleAggregateFunction(max, Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, kind, key, rank, bucket)
SETTINGS non_replicated_deduplication_window = 100000
;;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.metric_rollups_mv TO {db}.metric_rollups AS
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
;;
INSERT INTO {db}.metric_rollups
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
