"""Rapid Protect and Rapid Recover: replication objects carried on a shipped disk."""
