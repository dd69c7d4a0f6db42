-- Runstream schema v10: media per step (issue 16 item 1).
--
-- media   one row per media item a run logged: images, audio clips, tables (their encoded bytes,
--         PNG / WAV / Parquet, are content-addressed in the artifact store under `sha256`, as
--         artifact files are), histograms (bins and counts inline) and text samples (inline).
--         An item's identity is (project, run_id, key, step, rank, idx); ReplacingMergeTree keeps
--         the newest write of it (`version`: receive time, then the client's seq), so a replayed
--         or resent request leaves one row even where the writer's request records miss it.
--         Kind-specific facts live in their own columns (0 / empty for other kinds).

CREATE TABLE IF NOT EXISTS {db}.media
(
    project     LowCardinality(String),
    run_id      String,
    key         String,
    step        Int64,
    rank        UInt16,
    idx         UInt32 COMMENT 'position in a list logged under one key at one step',
    kind        LowCardinality(String) COMMENT 'image, audio, histogram, table, text',
    caption     String,
    sha256      String COMMENT 'artifact-store digest of the bytes; empty for histogram and text',
    size        UInt64,
    format      LowCardinality(String) COMMENT 'png, wav, parquet',
    time_ms     Int64,
    width       UInt32,
    height      UInt32,
    channels    UInt32,
    sample_rate UInt32,
    duration_s  Float64,
    num_rows    UInt64,
    columns     Array(String),
    bin_edges   Array(Float64),
    counts      Array(Float64),
    text        String,
    version     UInt128 COMMENT 'received_ms << 64 | client seq: the newest write of an item wins'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, run_id, key, step, rank, idx)
COMMENT 'media items per run, key and step; bytes in the artifact store by sha256'
