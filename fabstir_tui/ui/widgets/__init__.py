"""Leaf widgets (reactive) and the containers that arrange them, one panel per module."""
