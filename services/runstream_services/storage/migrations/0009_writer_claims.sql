-- Fencing of Kafka writers (several writers, issue 13): a writer that is given a partition first
-- claims it with its consumer-group generation, then reads the partition's intent. A writer that
-- wrote an intent then reads the claims: if a newer generation claimed the partition meanwhile,
-- it was frozen or cut off past its session and lost the partition (a zombie), and it drops the
-- block instead of inserting it. One of the two always sees the other's write, so a zombie either
-- stops or its block is the intent the new owner re-forms with the same dedup token.
CREATE TABLE IF NOT EXISTS {db}.writer_claims
(
    topic      String,
    partition  UInt32,
    generation Int64,
    member     String,
    time_ms    Int64
)
ENGINE = ReplacingMergeTree(generation)
ORDER BY (topic, partition)
COMMENT 'the newest consumer-group generation that holds each partition (zombie writers check it)'
;;
