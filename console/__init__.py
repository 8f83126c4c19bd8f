"""canary-console: progressive canary rollouts behind NGINX, judged by live metrics."""

__version__ = "0.1.0"
