"""Phase ``mirror``: a committed transaction's events applied to the target at once,
and which rows the target has not caught up with yet."""
