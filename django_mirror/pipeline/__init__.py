"""The runbook's processes: relay (outbox to stream), replay (stream to target), copy
(existing rows) and verify (row by row proof)."""
