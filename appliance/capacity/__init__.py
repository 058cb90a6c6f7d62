"""Capacity, billing and service-level accounting."""
