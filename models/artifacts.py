"""Saving and loading trained models and result files, written atomically.

A trained artifact is a folder holding `model.keras` (Keras 3 format) and
`metrics.json`; `load_model` also takes the `.keras` file itself or a
reference `.npz` together with a registered model name.
"""
from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np

from models import reference, registry

MODEL_FILE = "model.keras"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write) -> None:
    """Calls `write(tmp_path)`, then renames onto `path`: readers never see half a file.

    The file gets the mode any file the user writes gets (0666 less the umask),
    not the temporary file's private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                               suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON, atomically (numpy scalars become numbers)."""
    def default(value):
        if isinstance(value, (np.generic,)):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=2, default=default)
            handle.write("\n")

    atomic_write(path, write)


def save_model(model: keras.Model, path: str) -> None:
    """Saves `model` in the Keras format at `path` (a `.keras` file), atomically."""
    atomic_write(path, model.save)


def load_model(path: str, model_name: str | None = None) -> keras.Model:
    """Loads a model artifact: a folder with `model.keras`, a `.keras` file, or a
    reference `.npz` (then `model_name` names the registered architecture).

    Raises:
      FileNotFoundError / ValueError naming the path when it is missing,
      unreadable or does not match `model_name`.
    """
    if os.path.isdir(path) and os.path.exists(os.path.join(path, MODEL_FILE)):
        path = os.path.join(path, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model artifact at {path!r} (expected a folder with "
                                f"{MODEL_FILE}, a .keras file or a reference .npz)")
    if path.endswith(".npz"):
        if not model_name:
            raise ValueError(f"{path} holds bare weights: pass the registered model name "
                             f"(--model), one of {registry.available()}")
        return reference.load_reference_weights(registry.build(model_name), path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # zip/h5 corruption surfaces as many exception types
        raise ValueError(f"cannot load Keras model {path!r}: {err}") from err
    if model_name and model_name not in model.name:
        raise ValueError(f"{path} holds model {model.name!r}, not {model_name!r}")
    return model
