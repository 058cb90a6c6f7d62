"""Health: metrics, readiness, hardware watchers."""
