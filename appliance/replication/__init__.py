"""Replication to the provider's data center: encrypted objects, S3 target, checkpoints."""
