"""Ransomware detection at ingest (issue 26): each committed snapshot is compared with its
source's previous one from the catalogs and the agent's compression summary only (no extra
read of the host's data); a snapshot over the thresholds is marked suspicious with its
evidence, and prune holds the source's last clean snapshots before it until an admin lifts
the hold. The storage engine knows nothing of this: the ingest API calls `Detector` after a
commit, and prune gets the held snapshot ids as a plain set."""
