"""Few-shot classification: zero-shot and intra-modal baselines, SeMoBridge (closed form) and SeMoBridge-T."""
