"""The v1 audit format: canonical JSON, entries, keys, Merkle tree, checkpoints, verification."""
