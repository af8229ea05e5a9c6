"""Modality-gap diagnostics of a backbone on its cached features, and the retrieval metrics other stages share."""
