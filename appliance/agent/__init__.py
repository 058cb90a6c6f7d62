"""rdr-agent: backs a host up to the appliance and restores from it."""
