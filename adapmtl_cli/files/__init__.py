"""File-writing ground: atomic writes and small file helpers (``atomic``), the run-folder layout (``rundir``)."""
