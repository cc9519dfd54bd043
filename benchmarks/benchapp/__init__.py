"""Two models of the same shape: ``Follow`` is mirrored, ``PlainFollow`` is not."""
