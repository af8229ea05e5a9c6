"""Names of the files the diagnose stage publishes, shared with the stages that read them."""

GAP_DETAILS = "gap_details.json"  # metrics plus the details behind them, in the output folder
