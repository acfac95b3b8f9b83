"""Prefect block types of Ariel: configuration a run loads by name, secrets included."""

from blocks.llm_provider import LLMProvider

__all__ = ["LLMProvider"]
