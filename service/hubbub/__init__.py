"""hubbub: real-time messaging over WebSockets (protocol v1)."""

__version__ = "0.1.0"
