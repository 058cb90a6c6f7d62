"""Tamper evidence: the appliance's append-only, hash-chained audit log (`log.py`)."""
