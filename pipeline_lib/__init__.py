"""bridgeflow's library: every stage and method as plain functions, free of Prefect and DVC."""

__version__ = "0.1.0"
