"""The load tool of issue 6: `python -m bench` (see bench/__main__.py and docs/performance.md)."""
