-- Kafka writer blocks that span partitions (issue 11 item 6): each partition's intent row also
-- names every (topic, partition, first, last) range of its block, so the new owner of any one of
-- those partitions can re-form the whole block (reading the other partitions' records from Kafka)
-- and insert it under the same dedup token. '' for a block of one partition (older rows too).
-- A copy and rename, as 0004 does: the cluster schema renders CREATE/INSERT/RENAME/DROP, not ADD
-- COLUMN. Run it while no writer is running (the server migrates before it starts writers).
CREATE TABLE IF NOT EXISTS {db}.writer_intents_v2
(
    topic      String,
    partition  UInt32,
    first_offset Int64,
    last_offset  Int64,
    time_ms    Int64,
    ranges     String DEFAULT '' COMMENT 'the whole block: topic:partition:first:last, comma-separated'
)
ENGINE = ReplacingMergeTree(time_ms)
ORDER BY (topic, partition)
COMMENT 'the block a Kafka writer is about to insert, so a replay after a crash re-forms it exactly'
;;
INSERT INTO {db}.writer_intents_v2 (topic, partition, first_offset, last_offset, time_ms)
SELECT topic, partition, first_offset, last_offset, time_ms FROM {db}.writer_intents
;;
RENAME TABLE {db}.writer_intents TO {db}.writer_intents_v1, {db}.writer_intents_v2 TO {db}.writer_intents
;;
DROP TABLE {db}.writer_intents_v1
