"""The client HTTP API (DESIGN §7): OpenAI-compatible completions, health, the model list."""

from fabstir_tui.engine.api.service import ApiService

__all__ = ["ApiService"]
