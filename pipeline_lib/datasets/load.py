"""Read a classification dataset entry's split lists, whatever its on-disk format."""

from __future__ import annotations

from pathlib import Path

from pipeline_lib.data.coop import CoopDataset
from pipeline_lib.datasets.config import ClassificationDataset


def load_classification(entry: ClassificationDataset, source: Path, check_files: bool = True) -> CoopDataset:
    """The entry's splits (absolute image paths, labels, class names) from the dataset folder `source`."""
    if entry.format == "imagenet":
        from pipeline_lib.data.imagenet import load_imagenet_dataset

        return load_imagenet_dataset(source, entry.image_dir, entry.classnames_file)  # lists the files it finds
    if entry.format == "fgvc_aircraft":
        from pipeline_lib.data.fgvc import load_fgvc_dataset

        return load_fgvc_dataset(source, entry.image_dir, check_files=check_files)
    if entry.format == "cub":
        from pipeline_lib.data.cub import load_cub_dataset

        return load_cub_dataset(source, entry.image_dir, check_files=check_files)
    if entry.format == "sop":
        from pipeline_lib.data.sop import load_sop_dataset

        return load_sop_dataset(source, entry.image_dir, check_files=check_files)
    if entry.format == "revisited":
        from pipeline_lib.data.revisited import load_revisited_dataset

        return load_revisited_dataset(source, check_files=check_files)
    from pipeline_lib.data.coop import load_coop_dataset

    return load_coop_dataset(source, entry.split_file, entry.image_dir, check_files=check_files)
