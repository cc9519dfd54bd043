"""django-mirror's benchmarks: ratios measured side by side in one run (``make bench``)."""
