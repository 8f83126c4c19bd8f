"""The demo sandbox: real nginx, Prometheus, two demo services and traffic, supervised."""
