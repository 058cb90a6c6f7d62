"""Front door 2: the LAN restore page -- its shell and static files (ui.py, static/), sign-in
(signin.py), the restore routes (restore.py: browse, search, downloads, archives, push
restores), and the admin areas (overview.py, plans.py, seed.py) that the page and admin
API tokens use. Imports nothing of the agents' front door (api/ingest)."""
