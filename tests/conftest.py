"""Shared fixtures live in tests/fixtures/<area>.py; each area adds its module here."""

pytest_plugins = [
    "tests.fixtures.dockerd",
    "tests.fixtures.nginx",
    "tests.fixtures.demo_services",
    "tests.fixtures.prometheus",
]
