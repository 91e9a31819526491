"""Tasks: declarative specs, local/TFDS sources and `tf.data` pipelines.

    >>> import data
    >>> data.get("mnist").input_shape
    (28, 28, 1)
"""
from data import tasks  # noqa: F401  (registers every task module)
from data.local import FileList, list_files
from data.pipeline import load, num_examples
from data.spec import SPLITS, TaskSpec, available, get, register_task

__all__ = ["SPLITS", "TaskSpec", "FileList", "available", "get", "load", "list_files",
           "num_examples", "register_task"]
