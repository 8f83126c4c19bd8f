"""Side effects behind core's Protocols: nginx, metric sources, docker, webhooks, health, log tails."""
