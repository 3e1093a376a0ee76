"""The chat server: app factory, settings, errors and the domain services."""
