-- Runstream schema v6: the model registry (issue 12). Written by the registry service
-- (registry/service.py) straight from the process that serves the RPC: registry writes are rare
-- (people and CI promoting models), so they do not travel on the ingest bus.
--
-- registered_models    one row per (project, name); ReplacingMergeTree(revision) keeps the newest.
-- model_versions       immutable: written once when a version is created, never updated. The
--                      lineage facts of the version (run, artifact files and digest, datasets,
--                      commit, metrics snapshot) live here and nowhere else.
-- model_version_edits  editable metadata (description, tags) as a history: the first row is the
--                      metadata as created, every edit is a new row with a higher revision; the
--                      current metadata is the highest revision.
-- model_alias_moves    the history of every alias: each row moves (or deletes: to_version 0) one
--                      alias of one model; the alias's current target is its highest revision. One
--                      row per move makes a move atomic and one target per alias true by construction.
-- Every create, edit, move and delete also writes an audit_log row (0001) with who, from -> to and
-- the reason. Revisions are unix microseconds, raised past the last one seen in this process.

CREATE TABLE IF NOT EXISTS {db}.registered_models
(
    project           LowCardinality(String),
    name              String,
    description       String,
    protected_aliases Array(String) COMMENT 'aliases only an admin key may move or delete',
    creator           String,
    created_ms        Int64,
    revision          UInt64
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY (project, name)
;;
CREATE TABLE IF NOT EXISTS {db}.model_versions
(
    project          LowCardinality(String),
    model            String,
    version          UInt32 COMMENT '1, 2, ... per model',
    run_id           String,
    artifact_name    String,
    artifact_version UInt32,
    artifact_sha256  FixedString(64) COMMENT 'the file digest for one file, else the digest of the file list',
    files            String COMMENT 'JSON list of {path, sha256, size}',
    datasets         String COMMENT 'JSON list of {name, version, uri}: the run datasets at registration',
    git_commit       String,
    git_dirty        UInt8,
    creator          String,
    created_ms       Int64,
    description      String COMMENT 'as given at creation; edits are in model_version_edits',
    metrics          String COMMENT 'JSON list of {key, last, min, max, count, last_step} chosen at registration'
)
ENGINE = MergeTree
ORDER BY (project, model, version)
;;
CREATE TABLE IF NOT EXISTS {db}.model_version_edits
(
    project     LowCardinality(String),
    model       String,
    version     UInt32,
    description String,
    tags        Map(String, String),
    actor       String,
    time_ms     Int64,
    revision    UInt64
)
ENGINE = MergeTree
ORDER BY (project, model, version, revision)
;;
CREATE TABLE IF NOT EXISTS {db}.model_alias_moves
(
    project      LowCardinality(String),
    model        String,
    alias        String,
    to_version   UInt32 COMMENT '0: the alias was deleted',
    from_version UInt32 COMMENT '0: the alias did not exist',
    actor        String,
    reason       String,
    time_ms      Int64,
    revision     UInt64
)
ENGINE = MergeTree
ORDER BY (project, model, alias, revision)
