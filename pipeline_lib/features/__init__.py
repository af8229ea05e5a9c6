"""Feature extraction into sharded zarr stores: images, augmented views of support images, patch tokens, texts."""
