"""Artifact byte stores, addressed by sha256: a local folder (embedded) or S3/MinIO."""
