"""Names of the files the czsl stage publishes, shared with the stages that read them (no code closure beyond this)."""

RESULTS = "results.json"  # per seed (seed<k>/results.json) and over all seeds (results.json: per-seed metric rows)
