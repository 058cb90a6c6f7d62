"""Maintenance job history and the maintenance jobs (prune, GC, verify, rebuild) that record
into it, around the storage engine's operations."""
