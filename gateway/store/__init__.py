"""The storage ring: the only code that talks to Redis (connections and pools, key
names, the Lua scripts, records, the audit log's appends). See docs/architecture.md."""
