"""The claims suite's machinery, behind claims.py (which declares the claims): runs, the fixed evaluation, verdicts
and the table. Nothing but claims.py and this package imports it."""
