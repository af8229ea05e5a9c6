"""Datasets: the embedded shapes world (renderer, captions, writers) and loaders for real on-disk formats (CoOp).

Submodules are imported explicitly (`pipeline_lib.data.coop`, `.images`, `.captions`, `.world`, `.stage`), so that
spawned rendering workers import only what they use.
"""
