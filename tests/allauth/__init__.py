"""django-allauth coexistence: a test site of its own (``make test-allauth``)."""
