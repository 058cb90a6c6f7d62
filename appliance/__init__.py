"""RDR appliance firmware: LAN backup ingest, deduplicating store, agent and restore."""

from rdr_format import __version__  # one version for the appliance and the agent

__all__ = ["__version__"]
