"""Sparsity mechanics: soft-threshold and mask parametrizations, baking, the target schedule and level controller."""
