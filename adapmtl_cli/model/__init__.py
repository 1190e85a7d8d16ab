"""The user's model: checkpoint loading, output-to-task mapping, component discovery (plain data out)."""
