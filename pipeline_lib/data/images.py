"""Image file reading with errors that name the file (a corrupt image must stop a run early, not become a NaN)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline_lib.data.errors import DatasetError

__all__ = ["DatasetError", "load_rgb"]


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image file fully and return it as an RGB PIL image.

    The whole file is decoded here (not lazily), so truncated files fail at this call with the file's name rather
    than later inside a transform or a worker process.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"expected an image file but found a directory: {path}") from None
    except UnidentifiedImageError:
        raise DatasetError(f"not a readable image (unknown or corrupt format): {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncated/corrupt data as OSError or SyntaxError
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc
