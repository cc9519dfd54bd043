"""Each model's phase at run time, the rules for changing it, and the database router
that follows it."""
