"""What one command runs end to end: prepare, prune, inspect, export, demo, and the ``--config`` TOML files."""
