"""Names of the files the few-shot stages publish, shared with the stages that read them."""

RESULTS = "results.json"  # one (shots, seed) run's accuracies and selections
# The report's full tables in its output folder: test and val accuracy (mean / std / n) per method and shots, paired
# differences, the bridge; the metrics file keeps the headline test accuracies.
REPORT_TABLES = "summary.json"
