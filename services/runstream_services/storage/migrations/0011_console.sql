-- Runstream schema v11: console capture (issue 16 item 2).
--
-- console_lines  one row per captured line of a run's stdout / stderr, per rank. A line's identity
--                is (project, run_id, time_ms, rank, client_id, line): the SDK process that captured
--                it and its number in that process's output (stdout and stderr share the count), with
--                the time it was completed. A replay carries the same values, so ReplacingMergeTree
--                keeps one row of it even where the writer's request records and the insert
--                deduplication window miss it; exact reads use FINAL. The sorting key starts with
--                (project, run_id, time_ms, rank), the order the query service reads a run's lines in.
CREATE TABLE IF NOT EXISTS {db}.console_lines
(
    project    LowCardinality(String),
    run_id     String,
    time_ms    Int64 COMMENT 'unix ms when the line was completed',
    rank       UInt16,
    client_id  String COMMENT 'the SDK process that captured the line',
    line       UInt64 COMMENT 'number of the line in its process output (stdout and stderr share it)',
    stream     Enum8('stdout' = 1, 'stderr' = 2),
    text       String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id, time_ms, rank, client_id, line)
SETTINGS non_replicated_deduplication_window = 10000
;;
