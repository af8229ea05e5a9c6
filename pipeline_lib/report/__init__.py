"""The static HTML report of the latest published results."""
