"""Live delivery: the event codec, cross-process fan-out, the connection registry, each connection."""
