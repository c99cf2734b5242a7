"""The example site of django-resilient-sessions (``make demo``)."""
