"""Pruning: choose decoder layers (strategies), cut them out (surgery), export (run)."""
