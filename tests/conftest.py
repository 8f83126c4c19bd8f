"""Shared fixtures live in tests/fixtures/<area>.py; each area adds its module here."""

import signal

pytest_plugins = [
    "tests.fixtures.dockerd",
    "tests.fixtures.nginx",
    "tests.fixtures.dynamic",
    "tests.fixtures.nginx_docker",
    "tests.fixtures.demo_services",
    "tests.fixtures.prometheus",
    "tests.fixtures.browser",
]


def _terminate(signum, frame):  # SIGTERM to pytest: unwind like Ctrl+C, so every fixture stops what it started
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _terminate)
