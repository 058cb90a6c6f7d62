"""The formats the agent and the appliance share: chunk files, catalogs, manifests and the
encrypted objects of the data center and shipped disks. Imports nothing of either side."""

__version__ = "0.1.0"
