"""Metrics (statsd), Sentry events and the per-minute figures the dashboard reads;
called by every layer above, never raising into it."""
