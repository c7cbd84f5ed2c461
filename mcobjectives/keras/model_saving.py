"""Saving and loading hooks of `ImportanceWeightedAutoencoder`: configs, build, checked weights.

`model.save("m.keras")` / `keras.models.load_model` round-trip the model: the networks
and prior layers by their Keras configs, the objective by its `get_config`, a fixed TFP
prior by its parameters (`mcobjectives.keras.serialization`), and the shapes of the
first batch, from which `build_from_config` creates every variable. The loaders of
weights check the file first (`mcobjectives.keras.saving`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import h5py
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.keras import saving, serialization
from mcobjectives.keras.variables import variable_key

tfd = tfp.distributions

__all__ = ["ModelSaving"]


class ModelSaving:
    """The Keras saving hooks of `ImportanceWeightedAutoencoder` (a mixin before keras.Model)."""

    def get_config(self) -> dict:
        """The constructor arguments: networks and prior as Keras configs, the objective's own."""
        if isinstance(self.prior, tfd.Distribution):
            prior = {"distribution": serialization.serialize_distribution(self.prior)}
        else:
            prior = keras.saving.serialize_keras_object(self.prior)
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "prior": prior,
            "objective": serialization.serialize_objective(self.objective),
            "seed": self.seed,
            "max_nonfinite_steps": self.max_nonfinite_steps,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        """The model `get_config` describes; a config lacking a part is a `ModelFileError`."""
        missing = [k for k in ("encoder", "decoder", "prior", "objective") if k not in config]
        if missing:
            raise saving.ModelFileError(
                f"The saved config of an {cls.__name__} lacks {missing} (it holds "
                f"{sorted(config)}): the file's config.json was edited or damaged, or it was "
                "written by another version of the class. Save the model again."
            )
        config = dict(config)
        prior = config.pop("prior")
        if isinstance(prior, dict) and set(prior) == {"distribution"}:
            prior = serialization.deserialize_distribution(prior["distribution"])
        else:
            prior = keras.saving.deserialize_keras_object(prior, custom_objects=custom_objects)
        return cls(
            encoder=keras.saving.deserialize_keras_object(
                config.pop("encoder"), custom_objects=custom_objects
            ),
            decoder=keras.saving.deserialize_keras_object(
                config.pop("decoder"), custom_objects=custom_objects
            ),
            prior=prior,
            objective=serialization.deserialize_objective(config.pop("objective")),
            **config,
        )

    def _own_variables(self) -> list:
        """The model's own variables in the order Keras saves them ("vars/0", ... in a file)."""
        return list(self._trainable_variables) + list(self._non_trainable_variables)

    def load_own_variables(self, store) -> None:
        """Keras' hook for the model's own variables (the objective's, the counters).

        Called by `keras.models.load_model` and `load_weights` before the layers'
        variables: a file holding another number of them (weights of a model with
        another objective) or a non-finite objective variable (a NaN `beta_logit`) is
        refused naming them, before anything is assigned.
        """
        variables = self._own_variables()
        keys = list(store.keys())
        if len(keys) != len(variables):
            trainable = [v.name for v in self._trainable_variables]
            error = saving.ModelFileError(
                saving.describe_mismatch(
                    {f"vars/{k}": () for k in keys},
                    {f"vars/{i}": () for i in range(len(variables))},
                    [v.name for v in variables],
                    trainable,
                )
                + "."
            )
            saving.record_error(error)
            raise error
        values = [np.asarray(store[str(i)]) for i in range(len(variables))]
        try:
            saving.check_own_values(values, variables, "The saved weights")
        except saving.ModelFileError as error:
            saving.record_error(error)
            raise
        super().load_own_variables(store)

    def load_weights(self, filepath, skip_mismatch: bool = False, **kwargs) -> None:
        """`keras.Model.load_weights`, after checks that name a damaged or mismatched file.

        Before Keras reads a local `.weights.h5` or `.keras` file, the file is checked
        (`mcobjectives.keras.saving.check_weights_file`, or the archive's weights member)
        and its variables (their paths and shapes) compared with this model's: a damaged
        file, weights of a model with other variables (another objective: a learnable
        CIWAE's `beta_logit`; another network: latent size, hidden units) or a NaN
        weight is refused with a `mcobjectives.keras.saving.ModelFileError` naming the
        file, the variables that differ and the likely cause, and the model keeps its
        weights. With `skip_mismatch=True` the comparison is left to Keras, which skips
        mismatched layers with a warning. Any other error of Keras is re-raised as a
        `ModelFileError` naming the file.
        """
        path = str(filepath)
        where = f"The weights file {path!r}"
        local = "://" not in path  # a remote path (gs://, hf://) is left to Keras
        handle = None
        try:
            if local and path.endswith(".keras"):
                _, data = saving.read_archive(path)
                if data is not None:
                    saving.check_h5_bytes(data, path, f"{path!r}: its weights member")
                    handle = h5py.File(io.BytesIO(data), "r")
            elif local and path.endswith(".weights.h5"):
                saving.check_weights_file(path)
                handle = h5py.File(path, "r")
            if handle is not None and self.built:
                variables = self._own_variables()
                mismatch = None
                if not skip_mismatch:
                    mismatch = saving.describe_mismatch(
                        saving.h5_layout(handle),
                        saving.model_layout(self),
                        [v.name for v in variables],
                        [v.name for v in self._trainable_variables],
                    )
                if mismatch is not None:
                    raise saving.ModelFileError(
                        f"{where} does not fit this model, nothing was loaded: {mismatch}."
                    )
                saving.check_own_values(saving.own_values(handle), variables, where)
        finally:
            if handle is not None:
                handle.close()
        saving.record_error(None)
        try:
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        except (ValueError, OSError, KeyError) as error:
            raise saving.wrapped_error(error, where) from error

    def check_finite_weights(self) -> None:
        """Raises a ValueError naming every weight that a sound model cannot hold.

        That is a weight holding NaN, or an objective variable (a learnable CIWAE's
        `beta_logit`) that is NaN or infinite. `fit` never applies a non-finite update,
        so such a weight comes from a damaged file or checkpoint. `load_weights` and
        `mcobjectives.load_model` check the file; call this after restoring weights by
        other means (`tf.train.Checkpoint.restore`, `set_weights`).
        """
        objective = {variable_key(v) for v in self._objective_weights}
        bad = []
        for weight in self.weights:
            if not np.issubdtype(np.dtype(weight.dtype), np.floating):
                continue
            value = np.asarray(weight.numpy())
            if variable_key(weight) in objective:
                if not np.isfinite(value).all():
                    bad.append(f"{weight.path} (the objective's, = {value.tolist()})")
            elif np.isnan(value).any():
                bad.append(f"{weight.path} ({int(np.isnan(value).sum())} NaN)")
        if bad:
            raise ValueError(
                f"The model holds weights that are not finite: {', '.join(bad)}. Training "
                "never applies a non-finite update, so they were restored from a damaged "
                "file or checkpoint: restore an earlier one."
            )

    def get_build_config(self) -> dict | None:
        """The shapes and dtypes of the first batch per data point (None before one)."""
        if self._batch_spec is None:
            return None
        x, context = self._batch_spec
        return {
            "x_shape": list(x[0]),
            "x_dtype": x[1],
            "context_shape": None if context is None else list(context[0]),
            "context_dtype": None if context is None else context[1],
        }

    def build_from_config(self, config: dict | None) -> None:
        """Creates every variable by one forward pass on a batch of zeros of the saved shapes."""
        if not config:
            return
        x = tf.zeros([1, *config["x_shape"]], config["x_dtype"])
        batch = {"x": x}
        if config.get("context_shape") is not None:
            batch["context"] = tf.zeros([1, *config["context_shape"]], config["context_dtype"])
        self.objective_result(batch, seed=tf.constant([0, 0], tf.int32))

    def build(self, input_shape=None) -> None:
        """Creates the variables for batches x of `input_shape` ([B, ...]; float32)."""
        if input_shape is None or self.built:
            self.built = True
            return
        context = None
        if (
            isinstance(input_shape, (list, tuple))
            and len(input_shape) == 1
            and isinstance(input_shape[0], (list, tuple, tf.TensorShape))
        ):
            input_shape = input_shape[0]  # Keras' shapes of a call on [x]
        if isinstance(input_shape, Mapping):  # a dict batch's shapes
            input_shape, context = input_shape.get("x"), input_shape.get("context")
        if not isinstance(input_shape, (list, tuple, tf.TensorShape)) or len(input_shape) < 1:
            raise ValueError(
                f"`input_shape` must be the shape of x, e.g. (None, 784); got {input_shape!r}."
            )
        self.build_from_config(
            {
                "x_shape": list(input_shape)[1:],
                "x_dtype": "float32",
                "context_shape": None if context is None else list(context)[1:],
                "context_dtype": "float32",
            }
        )
