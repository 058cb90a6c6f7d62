"""Storage engine: chunks, catalogs, manifests, SQLite index. Synchronous, no web framework."""
