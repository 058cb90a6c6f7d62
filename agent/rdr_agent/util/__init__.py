"""Small helpers the agent needs and the appliance reuses (byte counts, TOML files, pacing,
malloc tuning)."""
