"""LAN backup API for agents."""
