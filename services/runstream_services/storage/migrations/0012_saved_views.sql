-- Runstream schema v12: saved views of the dashboard (issue 16, item 4).
--
-- saved_views  a project's named views of the runs page (filter, sort, columns, selected curves,
--              grouping: the JSON the dashboard keeps in its URL). ReplacingMergeTree(revision)
--              keyed by (project, name): saving a name again replaces the view, deleting it
--              writes a newer row with deleted = 1 (a tombstone). Who saved it and when are kept
--              (saved_by / saved_ms of the newest row; created_by / created_ms of the first save).
CREATE TABLE IF NOT EXISTS {db}.saved_views
(
    project     LowCardinality(String),
    name        String,
    state       String COMMENT 'JSON: the view (saved_views/rules.py documents its keys)',
    created_by  String,
    created_ms  Int64,
    saved_by    String COMMENT 'the key id (key:<id>) or anonymous',
    saved_ms    Int64,
    deleted     UInt8,
    revision    UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (project, name)
;;
