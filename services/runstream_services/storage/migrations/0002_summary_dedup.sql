-- The metric-summary view inherits the dedup token of each metrics insert
-- (deduplicate_blocks_in_dependent_materialized_views), but its target table only drops a
-- repeated block when it keeps a dedup window itself. Without one, a metrics block re-inserted
-- after a crash is dropped from `metrics` yet counted twice in the summaries.
ALTER TABLE {db}.metric_summaries MODIFY SETTING non_replicated_deduplication_window = 100000
