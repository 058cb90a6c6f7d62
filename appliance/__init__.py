"""RDR appliance firmware: LAN backup ingest, deduplicating store, agent and restore."""

__version__ = "0.1.0"
