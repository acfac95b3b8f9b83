"""Prefect block types of Ariel: configuration a run or the control plane loads, secrets included."""

from blocks.llm_provider import LLMProvider
from blocks.object_store import LocalObjectStore, ObjectStore, ObjectStoreError, S3ObjectStore

__all__ = ["LLMProvider", "LocalObjectStore", "ObjectStore", "ObjectStoreError", "S3ObjectStore"]
