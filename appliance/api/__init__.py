"""All of the appliance's HTTP: the one aiohttp application (app.py) built from two front
doors -- ingest/ (the agents) and page/ (the LAN restore page and admin tokens) -- which
never import each other, the pieces both share (auth, errors, parameters, JSON bodies,
throttling, byte budgets, TLS) and the operations routes (ops.py)."""
