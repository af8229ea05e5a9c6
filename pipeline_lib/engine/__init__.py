"""The machinery every method shares: params and config, THE stage registry, the runner, fingerprints and atomic
publishing, zarr stores with resumable blocks, shards, worker processes, events, dvc.yaml rendering, sweeps, summary.

Nothing here knows what a method computes; method packages plug in through the registry (`engine.stages`).
"""
