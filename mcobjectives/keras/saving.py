"""Loading saved models and weights, with damaged or mismatched files named.

Keras reads a `.keras` file (a zip archive holding `config.json` and the weights
`model.weights.h5`) and a `.weights.h5` file (HDF5) without telling what went wrong
when they are damaged: a truncated archive gives "File not found", a garbage weights
member h5py's "bad superblock" or "file signature not found", weights of a model with
other variables "expected 2 variables, received 3". The design here:

- `load_model(filepath)` is the loader of a saved `ImportanceWeightedAutoencoder`: it
  checks the file first (`check_model_file`: a complete zip archive whose members pass
  their CRC check, a readable `config.json` of this class, readable weights), then
  calls `keras.models.load_model`, and raises `ModelFileError` naming the file and
  the likely cause (an interrupted save, an incomplete copy, a file of another model)
  instead of Keras's or h5py's error, which it chains.
- `ImportanceWeightedAutoencoder.load_weights(filepath)` checks the file the same way
  (`check_weights_file` for a `.weights.h5`), then compares the file's variables
  (their paths and shapes) with the model's before anything is assigned: a file of a
  model with other variables is refused naming the variables that differ and the
  likely cause (another objective, such as a learnable CIWAE's `beta_logit`, or
  another network: latent size, hidden units), and the model keeps its weights.
- `keras.models.load_model` itself opens the file before any code of this library
  runs, so its errors for an unreadable archive cannot be rewritten; once the archive
  is read, the model's `from_config` names a config that lacks a part, and its
  `load_own_variables` names the model's own variables (the objective's and the
  skipped-step counters) when the file holds others, or when a learnable objective
  variable (a CIWAE `beta_logit`) is NaN or infinite. Use `load_model` for the
  checks of the whole file.

Non-finite weights. A weight that is NaN cannot come from `fit` (it skips non-finite
steps), so a NaN weight in a file is damage: the checks refuse it, naming its path in
the file. Infinite values are refused only for the objective's variables (a learnable
beta is kept strictly inside (0, 1) by a finite logit); a layer may hold an infinite
constant on purpose. Weights restored by other means (`tf.train.Checkpoint.restore`,
`set_weights`) are checked by `ImportanceWeightedAutoencoder.check_finite_weights()`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import zipfile
import zlib
from typing import Any

import h5py
import keras
import numpy as np

__all__ = ["ModelFileError", "check_model_file", "check_weights_file", "load_model"]
# The file-reading helpers without an underscore (read_archive, h5_layout, own_values, ...)
# are shared with the model's own saving hooks (keras/model_saving.py), not public API.

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
_NPZ_MEMBER = "model.weights.npz"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MODEL_CLASS = "ImportanceWeightedAutoencoder"
_REGISTERED_NAME = f"mcobjectives>{_MODEL_CLASS}"


class ModelFileError(ValueError):
    """A saved model or weights file that is damaged or does not fit the model.

    A `ValueError`, raised by `load_model`, `check_model_file`, `check_weights_file`
    and `ImportanceWeightedAutoencoder.load_weights`; its message names the file, what
    is wrong (a member, a variable) and the likely cause. The error of Keras or h5py,
    if any, is chained as its `__cause__`.
    """


def _path(filepath) -> str:
    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(
            f"`filepath` must be a path (a str or os.PathLike), got {type(filepath).__name__}."
        )
    return os.fspath(filepath)


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {path!r} (`filepath`).")
    if os.path.isdir(path):
        raise ModelFileError(
            f"{path!r} is a directory, not a saved file: give the path of a `.keras` or "
            "`.weights.h5` file."
        )
    if os.path.getsize(path) == 0:
        raise ModelFileError(
            f"{path!r} is empty (0 bytes): the save that wrote it was interrupted (a full "
            "disk, a killed process) or the copy is incomplete. Save the model again or use "
            "an earlier copy."
        )


_DAMAGED = (
    "the save that wrote it was interrupted (a full disk, a killed process) or the file "
    "was truncated or corrupted in a copy or download. Save the model again or use an "
    "earlier copy."
)


# ------------------------------------------------------------------ HDF5 weights
def check_h5_bytes(data: bytes | None, path: str, where: str) -> None:
    """Checks that the HDF5 weights (bytes, or the file `path` when None) are readable."""
    head = data[:8] if data is not None else _read_head(path)
    if head != _HDF5_SIGNATURE:
        raise ModelFileError(
            f"{where} is not an HDF5 file (it lacks the HDF5 signature at its start): it is "
            f"not a Keras weights file, or {_DAMAGED}"
        )
    try:
        handle = h5py.File(io.BytesIO(data) if data is not None else path, "r")
    except OSError as error:
        raise ModelFileError(f"{where} cannot be read as HDF5 ({error}): {_DAMAGED}") from error
    with handle:
        _check_h5_contents(handle, where)


def _read_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def _check_h5_contents(handle: h5py.File, where: str) -> None:
    """Reads every variable (a truncated file fails here) and refuses NaN values."""
    datasets: list[tuple[str, h5py.Dataset]] = []
    handle.visititems(
        lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None
    )
    for name, dataset in datasets:
        try:
            value = dataset[()]
        except (OSError, ValueError, KeyError) as error:
            raise ModelFileError(
                f"{where}: the variable {name!r} cannot be read ({error}): {_DAMAGED}"
            ) from error
        value = np.asarray(value)
        if name.startswith("vars/"):
            continue  # the model's own variables: named by the model's load_own_variables
        if np.issubdtype(value.dtype, np.floating) and np.isnan(value).any():
            raise ModelFileError(
                f"{where}: the variable {name!r} holds {int(np.isnan(value).sum())} NaN "
                "value(s). Training skips non-finite updates, so the file was written from "
                "weights that were corrupted, or the file itself is damaged: use an earlier "
                "copy."
            )


def h5_layout(handle: h5py.File) -> dict[str, tuple[int, ...]]:
    """{path: shape} of every variable in a Keras weights file, the optimizer's left out."""
    layout: dict[str, tuple[int, ...]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
            layout[name] = tuple(obj.shape)

    handle.visititems(visit)
    return layout


def check_weights_file(filepath) -> None:
    """Raises `ModelFileError` if a `.weights.h5` file is damaged; else returns None.

    The file must exist, carry the HDF5 signature, open with h5py, and every variable
    in it must read in full (a truncated file fails) and hold no NaN.
    """
    path = _path(filepath)
    _require_file(path)
    check_h5_bytes(None, path, f"The weights file {path!r}")


# ------------------------------------------------------------------ .keras archives
def _open_archive(path: str) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path!r} is not a complete zip archive (a `.keras` file is one, holding "
            f"{CONFIG_MEMBER} and {WEIGHTS_MEMBER}); its end, where the archive's index "
            f"lies, is missing or damaged: {_DAMAGED}"
        )
    try:
        archive = zipfile.ZipFile(path, "r")
        damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error) as error:
        raise ModelFileError(f"{path!r} is a damaged zip archive ({error}): {_DAMAGED}") from error
    if damaged is not None:
        archive.close()
        raise ModelFileError(
            f"{path!r}: the member {damaged!r} fails its CRC check (its bytes were changed): "
            f"{_DAMAGED}"
        )
    return archive


def read_archive(filepath) -> tuple[dict, bytes | None]:
    """(config dict, the bytes of `model.weights.h5` or None) of a checked `.keras` file."""
    path = _path(filepath)
    _require_file(path)
    if not path.endswith(".keras"):
        raise ModelFileError(
            f"{path!r} is not a `.keras` file: `load_model` reads the zip archives that "
            "`model.save('name.keras')` writes; load a `.weights.h5` file with "
            "`model.load_weights(path)` into a model built like the saved one."
        )
    with _open_archive(path) as archive:
        names = archive.namelist()
        if CONFIG_MEMBER not in names:
            raise ModelFileError(
                f"{path!r} lacks the member {CONFIG_MEMBER!r} (it holds {sorted(names)}): "
                "it was not written by `model.save`, or the archive was rebuilt without it. "
                "Save the model again or use an earlier copy."
            )
        try:
            config = json.loads(archive.read(CONFIG_MEMBER))
        except (ValueError, UnicodeDecodeError) as error:
            raise ModelFileError(
                f"{path!r}: its {CONFIG_MEMBER} is not valid JSON ({error}): {_DAMAGED}"
            ) from error
        if not isinstance(config, dict):
            raise ModelFileError(
                f"{path!r}: its {CONFIG_MEMBER} holds a {type(config).__name__}, not a Keras "
                f"model config: {_DAMAGED}"
            )
        if WEIGHTS_MEMBER in names:
            weights = archive.read(WEIGHTS_MEMBER)
        elif _NPZ_MEMBER in names:
            weights = None  # Keras' other weights format: Keras checks it itself
        else:
            raise ModelFileError(
                f"{path!r} lacks the member {WEIGHTS_MEMBER!r}, the model's weights (it "
                f"holds {sorted(names)}): the archive was rebuilt without it or the save "
                "was interrupted. Save the model again or use an earlier copy."
            )
    return config, weights


def _saved_class(config: dict) -> str:
    return str(config.get("registered_name") or config.get("class_name"))


def _is_our_model(name: str, custom_objects: dict[str, Any] | None) -> bool:
    """Whether the saved class `name` is `ImportanceWeightedAutoencoder` or a subclass."""
    from mcobjectives.keras.model import ImportanceWeightedAutoencoder

    if name in (_REGISTERED_NAME, _MODEL_CLASS):
        return True
    cls = keras.saving.get_registered_object(name, custom_objects=custom_objects)
    if cls is None and custom_objects:
        cls = custom_objects.get(name.split(">")[-1])
    return isinstance(cls, type) and issubclass(cls, ImportanceWeightedAutoencoder)


def check_model_file(filepath, custom_objects: dict[str, Any] | None = None) -> None:
    """Raises `ModelFileError` if a `.keras` file of an `ImportanceWeightedAutoencoder`
    is damaged or holds another model; else returns None.

    Checks, in order: the file exists and is a complete zip archive whose members pass
    their CRC check; it holds `config.json` (valid JSON, the config of an
    `ImportanceWeightedAutoencoder` or of a registered subclass, or of one in
    `custom_objects`) and `model.weights.h5` (HDF5 whose variables all read in full
    and hold no NaN).
    """
    path = _path(filepath)
    config, weights = read_archive(path)
    saved = _saved_class(config)
    if not _is_our_model(saved, custom_objects):
        raise ModelFileError(
            f"{path!r} holds a saved {saved}, not an {_MODEL_CLASS}: load it with "
            "keras.models.load_model, or give the path of a file that "
            f"{_MODEL_CLASS}.save wrote."
        )
    if weights is not None:
        check_h5_bytes(weights, path, f"{path!r}: its member {WEIGHTS_MEMBER!r}")


def load_model(
    filepath,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """Loads an `ImportanceWeightedAutoencoder` saved with `model.save("name.keras")`.

    `keras.models.load_model` after `check_model_file`: a damaged file (truncated, a
    member changed or missing, garbage weights, a NaN weight) or a file of another
    model is refused with a `ModelFileError` naming the file and the likely cause, and
    any error Keras raises while rebuilding the model (a custom layer that is not
    registered, weights that do not fit the saved config) is re-raised as one naming
    the file, with Keras's error chained. Arguments as for `keras.models.load_model`.

    Returns:
      the model, its optimizer restored if it was saved compiled (and `compile`).
    """
    path = _path(filepath)
    check_model_file(path, custom_objects)
    _RECORDED.error = None
    try:
        model = keras.models.load_model(
            path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
        )
    except Exception as error:
        raise wrapped_error(error, f"{path!r}") from error
    return model


# Keras collects the errors of `load_own_variables` and raises one ValueError quoting
# the first among a list of objects; the model records its own here, so that the
# loaders can raise it, naming the file, rather than Keras's summary.
_RECORDED = threading.local()


def record_error(error: ModelFileError | None) -> None:
    """Records an error of the model's `load_own_variables` for `wrapped_error`."""
    _RECORDED.error = error


def wrapped_error(error: Exception, where: str) -> ModelFileError:
    """A `ModelFileError` naming `where`, from our own error (or the one recorded while
    Keras loaded, which Keras reports inside its own) or else from Keras's."""
    recorded = getattr(_RECORDED, "error", None)
    _RECORDED.error = None
    if recorded is not None:
        return ModelFileError(f"{where}: {recorded}")
    if isinstance(error, ModelFileError):
        return ModelFileError(f"{where}: {error}")
    return ModelFileError(f"{where} cannot be loaded: {type(error).__name__}: {error}")


# ------------------------------------------------------------------ weights of a model
def model_layout(model: keras.Model) -> dict[str, tuple[int, ...]]:
    """{path: shape} of the variables `model.save_weights` would write (optimizer left out)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "layout.weights.h5")
        keras.Model.save_weights(model, path)
        with h5py.File(path, "r") as handle:
            return h5_layout(handle)


def describe_mismatch(
    saved: dict[str, tuple[int, ...]],
    own: dict[str, tuple[int, ...]],
    own_names: list[str],
    trainable_names: list[str],
) -> str | None:
    """What differs between a file's and a model's layouts, and the likely cause; None if equal.

    The model's own variables ("vars/0", ... in the file) are the objective's (e.g. a
    learnable CIWAE's `beta_logit`, trainable, saved first) and the skipped-step
    counters; `own_names` names them in that order, `trainable_names` the objective's.
    The others are the layers' variables, named by their paths in the file.
    """
    saved_own = sum(p.startswith("vars/") for p in saved)
    layers_saved = {p: s for p, s in saved.items() if not p.startswith("vars/")}
    layers_own = {p: s for p, s in own.items() if not p.startswith("vars/")}
    only_saved = sorted(set(layers_saved) - set(layers_own))
    only_own = sorted(set(layers_own) - set(layers_saved))
    reshaped = sorted(p for p in set(layers_saved) & set(layers_own) if saved[p] != own[p])
    parts = []
    if saved_own != len(own_names):
        parts.append(
            f"the model itself holds {saved_own} variables in the file and {len(own_names)} "
            f"here ({', '.join(own_names)})"
        )
        if saved_own > len(own_names):
            parts.append(
                "likely cause: the weights were saved with an objective that has learnable "
                "variables this model's objective lacks (CIWAE(learnable_beta=True) holds "
                "beta_logit): load them into a model with that objective"
            )
        else:
            missing = ", ".join(trainable_names) or "its variables"
            parts.append(
                f"likely cause: this model's objective has learnable variables ({missing}) "
                "that the saved model's objective lacks (the weights were saved with, "
                "e.g., IWAE or a CIWAE of a fixed beta): load them into a model with that "
                "objective"
            )
    if reshaped:
        shown = ", ".join(f"{p}: {saved[p]} in the file, {own[p]} here" for p in reshaped[:4])
        parts.append(f"{len(reshaped)} variable(s) of other shapes ({shown})")
    if only_saved:
        parts.append(
            f"{len(only_saved)} variable(s) only in the file ({', '.join(only_saved[:4])})"
        )
    if only_own:
        parts.append(
            f"{len(only_own)} variable(s) of this model missing from the file "
            f"({', '.join(only_own[:4])})"
        )
    if reshaped or only_saved or only_own:
        parts.append(
            "likely cause: a different network (another latent_size, event_size, "
            "hidden_units or other layers): load the weights into a model built like the "
            "saved one"
        )
    return "; ".join(parts) or None


def own_values(handle: h5py.File) -> list[np.ndarray]:
    """The values of the model's own variables in a weights file ("vars/0", ...)."""
    if "vars" not in handle:
        return []
    group = handle["vars"]
    return [np.asarray(group[str(i)][()]) for i in range(len(group))]


def check_own_values(values, variables, where: str) -> None:
    """Refuses a non-finite value of a floating variable of the model itself, naming it.

    These are the objective's variables (a learnable CIWAE's `beta_logit`): a NaN or
    infinite one would make every bound NaN or give beta exactly 0 or 1, which the
    learnable parametrization excludes.
    """
    for value, variable in zip(values, variables, strict=False):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ModelFileError(
                f"{where}: the variable {variable.name!r} of the model's objective is "
                f"{value.tolist()}, not finite. Training never applies a non-finite update, "
                "so the weights were corrupted before they were saved or the file is "
                "damaged: use an earlier copy, or set the variable (e.g. a CIWAE's beta "
                "through its constructor) and retrain."
            )
