"""Data layer of supsup_jax: tfds loading (online or offline) and task streams.

See docs/guide/data.md. Main entry point: :func:`make_stream`.
"""
from supsup_jax.data.sources import (
    DataChecksumError,
    DataLayoutError,
    DataNotFoundError,
    IN_MEMORY_DATASETS,
    KNOWN_DATASETS,
    clear_cache,
    load_dataset,
    load_image_folder,
    resolve_data_dir,
)
from supsup_jax.data.streams import (
    STREAMS,
    InMemoryStream,
    PermutedStream,
    RotatedStream,
    TaskStream,
    TFDSTaskStream,
    make_stream,
    measure_throughput,
    supsup_cifar100_order,
)
from supsup_jax.data.transforms import NORM, rotate, shuffled_index

__all__ = [
    "DataChecksumError", "DataLayoutError", "DataNotFoundError", "IN_MEMORY_DATASETS",
    "KNOWN_DATASETS", "NORM", "STREAMS",
    "InMemoryStream", "PermutedStream", "RotatedStream", "TaskStream", "TFDSTaskStream",
    "clear_cache", "load_dataset", "load_image_folder", "make_stream",
    "measure_throughput", "resolve_data_dir", "rotate", "shuffled_index",
    "supsup_cifar100_order",
]
