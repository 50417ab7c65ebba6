"""fabstir-tui: a terminal dashboard hosting a Fabstir inference node."""

__version__ = "0.1.0"
