"""Fine-tuning a ``Pruning``: the loop, deterministic batches, devices and precision, evaluation, torchrun, resume."""
