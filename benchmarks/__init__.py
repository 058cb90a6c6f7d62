"""Reproducible benchmarks of the appliance (run with `python -m benchmarks NAME`)."""
