"""Generated code of the v1 wire contract (proto/runstream/v1). Regenerate: scripts/gen_protos.sh."""
