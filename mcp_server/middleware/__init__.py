"""Cross-cutting concerns of every tool call, one module each."""
