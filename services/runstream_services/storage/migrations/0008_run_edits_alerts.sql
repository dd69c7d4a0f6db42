-- Runstream schema v8: editable runs and alerts (issue 16, items 3 and 5).
--
-- run_edits      every edit a person made to a run after the fact (name, notes, tags, hypothesis,
--                outcome), one row per changed field: who (the key's id and role), when, the value
--                before and after (JSON). The run's row in `runs` carries the edited name, notes
--                and tags; hypothesis and outcome live here only (the newest edit is current). The
--                store writer reads a run's edits with its row, so a run event sent before an edit
--                (a replay, a resend, `runstream sync`) never undoes it (run_edits/rules.py).
-- alert_rules    per-project alert rules; ReplacingMergeTree(revision): the newest row of a rule
--                wins, and a deleted rule is a row with deleted = 1.
-- alert_firings  one row per fired condition episode of (rule, run), and a newer row of the same
--                firing once its webhook delivery ended (delivered / failed, attempts, last error).

CREATE TABLE IF NOT EXISTS {db}.run_edits
(
    project     LowCardinality(String),
    run_id      String,
    field       LowCardinality(String) COMMENT 'name, notes, tags, hypothesis, outcome',
    old_value   String COMMENT 'JSON',
    new_value   String COMMENT 'JSON',
    actor       String,
    role        LowCardinality(String),
    time_ms     Int64,
    revision    UInt64
)
ENGINE = MergeTree
ORDER BY (project, run_id, revision)
;;
CREATE TABLE IF NOT EXISTS {db}.alert_rules
(
    project     LowCardinality(String),
    rule_id     String,
    name        String,
    kind        LowCardinality(String) COMMENT 'threshold, nonfinite, no_points, crashed',
    key         String COMMENT 'metric key (threshold, nonfinite: empty means any key)',
    op          LowCardinality(String) COMMENT '>, >=, <, <=, ==, !=',
    value       Float64,
    last_n      UInt32 COMMENT 'threshold: the mean of the last N points (1: the newest point)',
    minutes     Float64 COMMENT 'no_points: minutes without a point',
    webhook_url String,
    secret      String COMMENT 'HMAC-SHA256 key of the webhook signature',
    creator     String,
    created_ms  Int64,
    deleted     UInt8,
    revision    UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (project, rule_id)
;;
CREATE TABLE IF NOT EXISTS {db}.alert_firings
(
    project     LowCardinality(String),
    rule_id     String,
    run_id      String,
    firing_id   String,
    fired_ms    Int64,
    message     String,
    detail      String COMMENT 'JSON: the values that fired it',
    status      LowCardinality(String) COMMENT 'pending, delivered, failed',
    attempts    UInt32,
    last_error  String,
    revision    UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (project, fired_ms, firing_id)
