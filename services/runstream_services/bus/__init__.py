"""The bus between ingest and writers: embedded (in-process) or Kafka, chosen by settings.bus."""
