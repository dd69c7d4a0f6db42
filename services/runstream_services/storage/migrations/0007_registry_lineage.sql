-- Runstream schema v7: registry inputs, lineage, model-level edits and version claims (issue 12).
-- Written by the registry service (registry/service.py) like 0006's tables.
--
-- run_inputs               what a run consumed (run.use_artifact): an artifact version of the
--                          project or a registered model version, resolved when the call was made
--                          ("clf@production" is stored as the version the alias pointed at then,
--                          with the alias kept for the record). One row per (run, kind, name,
--                          version): a repeated call changes nothing. Lineage walks it both ways.
-- registered_model_edits   a model's editable metadata (description, tags) as a history, like
--                          model_version_edits: the newest revision is current; no row means the
--                          model is as created (registered_models.description, no tags).
-- model_version_claims     who may write version N of a model. Every process serving the registry
--                          claims the next number with one insert whose deduplication token is
--                          (project, model, N): the store keeps the first such insert and drops the
--                          others, so exactly one claimant reads its own claim back and writes the
--                          version; the others claim N+1. Kept apart from model_versions so a
--                          version row is only ever written by the one claimant.

CREATE TABLE IF NOT EXISTS {db}.run_inputs
(
    project        LowCardinality(String),
    run_id         String COMMENT 'the consuming run',
    kind           Enum8('artifact' = 1, 'model_version' = 2),
    name           String COMMENT 'artifact name, or registered model name',
    version        UInt32 COMMENT 'artifact version (per project and name), or model version',
    ref            String COMMENT 'the reference as the run gave it: name, name:3, name@alias',
    alias          String COMMENT 'the alias it was resolved through, if any',
    source_run_id  String COMMENT 'the run that produced the artifact / the version',
    sha256         String COMMENT 'the artifact digest (registry rules.artifact_digest)',
    actor          String,
    time_ms        Int64
)
ENGINE = ReplacingMergeTree(time_ms)
ORDER BY (project, run_id, kind, name, version)
;;
CREATE TABLE IF NOT EXISTS {db}.registered_model_edits
(
    project     LowCardinality(String),
    name        String,
    description String,
    tags        Map(String, String),
    actor       String,
    time_ms     Int64,
    revision    UInt64
)
ENGINE = MergeTree
ORDER BY (project, name, revision)
;;
CREATE TABLE IF NOT EXISTS {db}.model_version_claims
(
    project   LowCardinality(String),
    model     String,
    version   UInt32,
    claim     String COMMENT 'random id of the claimant (one CreateModelVersion call)',
    time_ms   Int64
)
ENGINE = MergeTree
ORDER BY (project, model, version)
SETTINGS non_replicated_deduplication_window = 100000
