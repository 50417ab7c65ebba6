"""The node engine. It must never import Textual or fabstir_tui.ui (DESIGN §2)."""
