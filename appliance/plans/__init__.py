"""Each host's backup plan, its audit (every changed field, the dump command above all), the
agents' last signs of life, and the one host-settings edit the page and the CLI share."""
