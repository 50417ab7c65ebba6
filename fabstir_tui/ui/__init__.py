"""The Textual UI over the node engine; it never holds engine state of its own."""
