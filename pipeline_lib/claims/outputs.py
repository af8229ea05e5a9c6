"""Names of the files the claims stage publishes, shared with the summary and the report that read them."""

# Every claim with its interval, verdict, paper effect and diagnostic ({"level", "bootstrap_resamples", "claims":
# [...]}) in the stage's output folder; the metrics file keeps per claim the difference, interval and verdict.
TABLE = "claims.json"
