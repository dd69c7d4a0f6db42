"""The gRPC query service: filter language, run search, downsampled series."""
