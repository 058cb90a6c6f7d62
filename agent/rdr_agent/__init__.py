"""The backup agent: walks, chunks and uploads a host's files, restores them, runs scheduled
backups and pushed restore jobs. Installs alone (the ``rdr-agent`` distribution in agent/)."""
