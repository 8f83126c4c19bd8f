"""The rollout core: state machine, events, journal, lock, config, gates, analysis, and every adapter's Protocol.

Imports nothing from adapters, remote, commands or ui, and never textual or rich (tests/test_layers.py)."""
