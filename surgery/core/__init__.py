"""Layer 1, core: hookspecs, the plugin host, methods and their options, the anatomy and its parts,
plan / apply / revert, snapshots and the in-memory history. Imports nothing above it."""
