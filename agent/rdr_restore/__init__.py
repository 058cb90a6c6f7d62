"""The one restore engine (plan, fetch, write) and its chunk sources: the appliance over HTTP
(`rdr-agent restore`, pushed restores), data-center objects (`rdr dc restore`) and a
recovery disk (`rdr-agent restore --from-disk`). Imports nothing of the appliance."""
