"""Front door 1: the agents' API (backups, their own restores) and the agent job channel
(push restores, scheduled backups). Imports nothing of the page (front door 2)."""
