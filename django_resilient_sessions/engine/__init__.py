"""The session store, in layers: see :mod:`.state`."""
