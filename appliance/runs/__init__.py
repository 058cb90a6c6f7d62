"""Backup runs (the queue behind scheduled backups, "back up now", pause and resume) and the
files each run reported as not backed up (coverage gaps)."""
