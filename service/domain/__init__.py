"""The pure core: case states, the transition table, the step plan and the decisions.

Nothing in this package performs I/O or reads a clock; it imports the standard library and
``service.errors`` only (enforced by import-linter in pyproject.toml).
"""
