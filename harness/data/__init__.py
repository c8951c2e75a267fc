"""Data in detectron2's dataset-dict format: catalogs, built-in datasets, the mapper with MMSegmentation's
training transforms (``transforms``), loaders."""

from harness.data.builtin import import_user_datasets, register_sem_seg
from harness.data.catalog import DatasetCatalog, Metadata, MetadataCatalog
from harness.data.loader import DataParallelLayout, StepSampler, build_test_loader, build_train_loader, split_batch
from harness.data.mapper import AugmentConfig, SemSegMapper
from harness.data.sem_seg import load_sem_seg
from harness.data.splits import dataset_splits, label_space, missing_splits

__all__ = [
    "AugmentConfig",
    "DataParallelLayout",
    "DatasetCatalog",
    "Metadata",
    "MetadataCatalog",
    "SemSegMapper",
    "StepSampler",
    "build_test_loader",
    "build_train_loader",
    "dataset_splits",
    "label_space",
    "load_sem_seg",
    "missing_splits",
    "register_sem_seg",
    "split_batch",
]

import_user_datasets()  # last: a user's module may import any of the names above
