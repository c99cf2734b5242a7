"""Real-browser end-to-end tests of the example site (``example_project/``)."""
