"""Each host's backup plan, its audit of dump-command changes, the agents' last signs of life,
and the one host-settings edit the page and the CLI share."""
