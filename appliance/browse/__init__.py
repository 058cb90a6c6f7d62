"""Reading committed snapshots for the LAN restore page: tree, search, downloads."""
