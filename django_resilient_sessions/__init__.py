"""Django sessions that survive a Redis outage without logging anyone out."""

__version__ = "0.1.0"
