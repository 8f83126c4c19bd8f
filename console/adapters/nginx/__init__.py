"""NGINX as the traffic router: the managed include, its atomic write and commands, the probe, the router."""
