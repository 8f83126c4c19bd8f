"""The engine as its own process: its socket server, the wire protocol, and the links a console attaches through."""
