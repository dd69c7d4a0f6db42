"""The gRPC ingest service: validates, publishes to the bus, acks when durable."""
