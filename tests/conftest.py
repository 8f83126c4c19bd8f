"""Shared fixtures live in tests/fixtures/<area>.py; each area adds its module here."""

pytest_plugins = [
]
