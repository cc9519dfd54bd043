"""The bottom layer: event encoding, row differences, batching, locking, AWS clients and
background threads. Imports nothing else of the package."""
