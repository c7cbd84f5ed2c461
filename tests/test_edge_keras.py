"""The Keras model's edges: shapes where the pieces meet, layer arguments, damaged files.

A battery of bad inputs a new user meets with `ImportanceWeightedAutoencoder` (issue 17,
items 4 and 6): a context of another batch size than x, data of other features than
the built model's, layer arguments out of range, and saved files that are truncated,
corrupted, of another model, or hold weights of a model with other variables (another
objective, another network) or a NaN learnable beta. Each case asserts the error type
and that the message names the argument, the file or the variable (and the likely
cause), or asserts the exact handled result. The models are tiny (10 pixels, 8 hidden
units) so that every fit and save takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
import re
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import networks
from mcobjectives.keras.saving import ModelFileError, check_weights_file, load_model
from tests.conftest import in_mode, modes

tfd = tfp.distributions

B, D, C, LATENT = 6, 10, 4, 3
_RNG = np.random.default_rng(0)
X = (_RNG.random([B, D]) < 0.5).astype(np.float32)
CONTEXT = _RNG.random([B, C]).astype(np.float32)


def _prior(latent=LATENT):
    return tfd.Independent(tfd.Normal(tf.zeros(latent), tf.ones(latent)), 1)


def _model(objective=None, latent=LATENT, hidden=(8,)):
    return mco.ImportanceWeightedAutoencoder(
        networks.GaussianEncoder(latent, hidden),
        networks.BernoulliDecoder(D, hidden),
        _prior(latent),
        objective or mco.IWAE(2),
        seed=1,
    )


def _conditional():
    return mco.ImportanceWeightedAutoencoder(
        networks.GaussianEncoder(LATENT, (8,)),
        networks.BernoulliDecoder(D, (8,)),
        networks.GaussianPrior(LATENT, (8,)),
        mco.IWAE(2),
        seed=1,
    )


def _trained(objective=None, **kwargs):
    keras.utils.set_random_seed(0)
    model = _model(objective, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(X, batch_size=B, epochs=1, verbose=0)
    return model


def _built(objective=None, **kwargs):
    """A compiled model built by one call (a fit would only take longer)."""
    keras.utils.set_random_seed(0)
    model = _model(objective, **kwargs)
    model.compile(keras.optimizers.Adam(1e-2))
    model(X)
    return model


def _weights(model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.weights]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Saved files of a trained IWAE model and a trained learnable-beta CIWAE model."""
    directory = tmp_path_factory.mktemp("saved")
    iwae = _trained()
    ciwae = _trained(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    paths = {
        "iwae.keras": directory / "iwae.keras",
        "iwae.weights.h5": directory / "iwae.weights.h5",
        "ciwae.keras": directory / "ciwae.keras",
        "ciwae.weights.h5": directory / "ciwae.weights.h5",
    }
    iwae.save(paths["iwae.keras"])
    iwae.save_weights(paths["iwae.weights.h5"])
    ciwae.save(paths["ciwae.keras"])
    ciwae.save_weights(paths["ciwae.weights.h5"])
    paths["directory"] = directory
    paths["iwae_bound"] = iwae(X).numpy()
    return paths


def _rewrite_archive(source, target, replace=None, drop=()):
    """A copy of the zip archive `source` with members replaced (name -> bytes) or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            zout.writestr(name, replace.get(name, zin.read(name)))
    return target


def _named(path) -> str:
    """A pattern matching the repr of `path` in a message."""
    return re.escape(repr(str(path)))


# ------------------------------------------------------------------ 1. context batch
CONTEXT_BATCH = r"`context` has batch size 5 but `x` has batch size 6.*same first dimension"
SHORT_CONTEXT = {"x": X, "context": CONTEXT[:5]}


def test_a_context_of_another_batch_size_is_refused_by_fit_naming_both_sizes():
    model = _conditional()
    model.compile(keras.optimizers.Adam())
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        model.fit(SHORT_CONTEXT, batch_size=B, verbose=0)


def test_a_dataset_whose_context_has_another_batch_size_is_refused_by_fit_before_tracing():
    model = _conditional()
    model.compile(keras.optimizers.Adam())
    data = tf.data.Dataset.from_tensors(SHORT_CONTEXT)
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        model.fit(data, verbose=0)
    assert not model.built  # refused from the element spec, before any trace


def test_a_context_of_another_batch_size_is_refused_by_evaluate():
    model = _conditional()
    model.compile(keras.optimizers.Adam())
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        model.evaluate(SHORT_CONTEXT, batch_size=B, verbose=0)


def test_a_dict_batch_whose_context_has_another_batch_size_is_refused_by_make_train_step():
    model = _conditional()
    step = mco.make_train_step(model, keras.optimizers.Adam(), jit_compile=False)
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        step({"x": tf.constant(X), "context": tf.constant(CONTEXT[:5])})
    assert step.experimental_get_tracing_count() == 0


def test_a_context_of_another_batch_size_is_refused_by_calling_the_model():
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        _conditional()(SHORT_CONTEXT)


def test_a_context_of_another_batch_size_is_refused_by_log_marginal():
    with pytest.raises(ValueError, match=CONTEXT_BATCH):
        _conditional().log_marginal(SHORT_CONTEXT, seed=0, num_samples=4, chunk_size=2)


@modes(
    "function",
    reason="a batch size unknown until run time needs a graph (eagerly every shape is "
    "known and refused statically); XLA compiles the run-time assertion away",
)
def test_a_context_batch_known_only_at_run_time_fails_an_assertion_naming_context(mode):
    model = _conditional()
    model({"x": X, "context": CONTEXT})  # built: the dynamic case is about the batch size alone
    spec = tf.TensorSpec([None, D], tf.float32), tf.TensorSpec([None, C], tf.float32)
    bound = in_mode(
        lambda x, context: model({"x": x, "context": context}), mode, input_signature=spec
    )
    # float32, a graph against eager: equal to rounding.
    np.testing.assert_allclose(
        bound(X, CONTEXT).numpy(), model({"x": X, "context": CONTEXT}), rtol=1e-5
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="`context` must have the batch"):
        bound(X, CONTEXT[:5])


# ------------------------------------------------------------------ 2. features
WIDE = np.zeros([B, D + 2], np.float32)
FEATURES = (
    r"`x` has shape \(6, 12\) but the model was built \(or trained\) on x of shape \(None, 10\)"
)


@pytest.fixture
def built():
    return _built()


def test_data_with_more_features_than_the_trained_model_is_refused_by_fit(built):
    before = _weights(built)
    with pytest.raises(ValueError, match=FEATURES):
        built.fit(WIDE, batch_size=B, verbose=0)
    _assert_same(before, _weights(built))


def test_a_dataset_with_other_features_is_refused_by_fit_from_its_element_spec(built):
    data = tf.data.Dataset.from_tensor_slices(np.zeros([B, 7], np.float32)).batch(3)
    with pytest.raises(ValueError, match=r"`x` has shape \(None, 7\).*\(None, 10\)"):
        built.fit(data, verbose=0)


def test_data_with_other_features_is_refused_by_evaluate(built):
    with pytest.raises(ValueError, match=FEATURES):
        built.evaluate(WIDE, batch_size=B, verbose=0)


def test_data_with_other_features_is_refused_by_predict(built):
    with pytest.raises(ValueError, match=FEATURES):
        built.predict(WIDE, batch_size=B, verbose=0)


def test_data_with_other_features_is_refused_by_log_marginal(built):
    with pytest.raises(ValueError, match=FEATURES):
        built.log_marginal(WIDE, seed=0, num_samples=4, chunk_size=2)


def test_data_with_other_features_is_refused_by_make_train_step(built):
    step = mco.make_train_step(built, built.optimizer, jit_compile=False)
    with pytest.raises(ValueError, match=FEATURES):
        step(tf.constant(WIDE))
    assert step.experimental_get_tracing_count() == 0


def test_images_fed_to_a_model_trained_on_flat_data_are_refused_naming_the_shapes(built):
    with pytest.raises(ValueError, match=r"`x` has shape \(6, 2, 5\).*\(None, 10\)"):
        built(X.reshape([B, 2, 5]))


def test_a_context_with_other_features_is_refused_naming_context():
    model = _conditional()
    model({"x": X, "context": CONTEXT})
    with pytest.raises(ValueError, match=r"`context` has shape \(6, 5\).*\(None, 4\)"):
        model({"x": X, "context": np.zeros([B, C + 1], np.float32)})


def test_a_loaded_model_refuses_data_of_other_features(files):
    loaded = keras.models.load_model(files["iwae.keras"])
    with pytest.raises(ValueError, match=FEATURES):
        loaded.evaluate(WIDE, batch_size=B, verbose=0)


def test_another_batch_size_with_the_built_features_is_accepted(built):
    bound = built(X[:4]).numpy()
    # Batch-independent seeds: the same draws; the matmuls of another batch size may round
    # differently.
    np.testing.assert_allclose(bound, built(X).numpy()[:4], rtol=1e-5)


# ------------------------------------------------------------------ 3. layer arguments
MIN_SCALE_LAYERS = {
    "GaussianEncoder": lambda s: networks.GaussianEncoder(LATENT, min_scale=s),
    "GaussianPrior": lambda s: networks.GaussianPrior(LATENT, min_scale=s),
    "TwoLayerGaussianEncoder": lambda s: networks.TwoLayerGaussianEncoder(min_scale=s),
    "TwoLayerGaussianPrior": lambda s: networks.TwoLayerGaussianPrior(min_scale=s),
}


@pytest.mark.parametrize("layer", list(MIN_SCALE_LAYERS))
@pytest.mark.parametrize("min_scale", [-1.0, 0.0, math.nan, math.inf, -math.inf])
def test_a_min_scale_that_is_not_finite_and_positive_is_refused_naming_it(layer, min_scale):
    with pytest.raises(ValueError, match=r"`min_scale` must be a finite float > 0"):
        MIN_SCALE_LAYERS[layer](min_scale)


@pytest.mark.parametrize("layer", list(MIN_SCALE_LAYERS))
@pytest.mark.parametrize("min_scale", ["1e-4", None, True])
def test_a_min_scale_that_is_not_a_number_is_a_type_error_naming_it(layer, min_scale):
    with pytest.raises(TypeError, match=r"`min_scale` must be a positive float"):
        MIN_SCALE_LAYERS[layer](min_scale)


def test_a_small_positive_min_scale_is_the_floor_of_every_scale():
    encoder = networks.GaussianEncoder(LATENT, (8,), min_scale=np.float32(0.5))
    scale = encoder(X).distribution.scale.numpy()
    assert encoder.min_scale == 0.5 and (scale > 0.5).all()


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: networks.GaussianEncoder(0), "latent_size"),
        (lambda: networks.GaussianEncoder(-1), "latent_size"),
        (lambda: networks.GaussianPrior(0), "latent_size"),
        (lambda: networks.GaussianEncoder(LATENT, (8, 0)), "hidden_units"),
        (lambda: networks.GaussianPrior(LATENT, (-3,)), "hidden_units"),
        (lambda: networks.BernoulliDecoder(D, (0,)), "hidden_units"),
        (lambda: networks.BernoulliDecoder(0), "event_size"),
        (lambda: networks.BernoulliDecoder(-784), "event_size"),
        (lambda: networks.TwoLayerGaussianEncoder((100, 0)), "latent_sizes"),
        (lambda: networks.SigmoidBeliefPrior((200, -1)), "latent_sizes"),
        (lambda: networks.TwoLayerGaussianEncoder(hidden_units=((200,), (0,))), "hidden_units"),
    ],
)
def test_a_size_below_one_is_refused_naming_it(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}` must be an int >= 1"):
        make()


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: networks.GaussianEncoder(4.0), "latent_size"),
        (lambda: networks.GaussianEncoder(LATENT, (8.5,)), "hidden_units"),
        (lambda: networks.BernoulliDecoder("784"), "event_size"),
    ],
)
def test_a_size_that_is_not_an_int_is_a_type_error_naming_it(make, argument):
    with pytest.raises(TypeError, match=f"`{argument}` must be a Python int"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: networks.GaussianEncoder(LATENT, activation="tanhh"),
        lambda: networks.GaussianPrior(LATENT, activation=3),
        lambda: networks.TwoLayerGaussianEncoder(activation="nope"),
        lambda: networks.TwoLayerGaussianPrior(activation="nope"),
        lambda: networks.SigmoidBeliefEncoder(activation="nope"),
        lambda: networks.SigmoidBeliefPrior(activation="nope"),
        lambda: networks.BernoulliDecoder(D, activation="sigmoidd"),
    ],
)
def test_an_activation_keras_does_not_know_is_refused_naming_it(make):
    with pytest.raises(ValueError, match=r"`activation` must be the name of a Keras activation"):
        make()


@pytest.mark.parametrize(
    "mean_pixel, found",
    [
        (np.full(D, 33.0), r"10 of its values are not \(range \[33.0, 33.0\], 0 NaN\)"),
        (np.r_[np.nan, np.full(D - 1, 0.5)], r"1 of its values are not .*1 NaN"),
        (np.r_[-0.1, np.full(D - 1, 0.5)], r"1 of its values are not \(range \[-0.1, 0.5\]"),
    ],
)
def test_a_mean_pixel_outside_the_unit_interval_is_refused_naming_it(mean_pixel, found):
    with pytest.raises(
        ValueError, match=r"`mean_pixel` must hold mean pixel intensities.*" + found
    ):
        networks.BernoulliDecoder(D, mean_pixel=mean_pixel)


def test_a_mean_pixel_of_zeros_and_ones_is_accepted_and_clipped_into_a_finite_bias():
    decoder = networks.BernoulliDecoder(D, (8,), mean_pixel=np.r_[0.0, np.ones(D - 1)])
    decoder(tf.zeros([1, LATENT]))
    bias = decoder.net.output_layer.bias.numpy()
    assert np.isfinite(bias).all() and bias[0] < -6 and (bias[1:] > 6).all()


def test_an_activation_given_as_a_callable_is_accepted_and_used():
    encoder = networks.GaussianEncoder(LATENT, (8,), activation=tf.nn.relu)
    encoder(X)
    assert encoder.net.hidden[0].activation is tf.nn.relu


# ------------------------------------------------------------------ 4. damaged .keras files
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_keras_file_is_refused_naming_the_file_and_the_cause(files, fraction, tmp_path):
    data = files["iwae.keras"].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match=_named(path) + r".*(interrupted|empty)"):
        load_model(path)


def test_a_truncated_keras_file_is_refused_by_load_weights_naming_it(files, tmp_path):
    data = files["iwae.keras"].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    model = _built()
    before = _weights(model)
    with pytest.raises(ModelFileError, match=_named(path) + ".*not a complete zip archive"):
        model.load_weights(path)
    _assert_same(before, _weights(model))


def test_a_keras_file_whose_weights_member_is_garbage_is_refused_naming_the_member(files, tmp_path):
    path = _rewrite_archive(
        files["iwae.keras"], tmp_path / "g.keras", replace={"model.weights.h5": b"\0" * 4096}
    )
    with pytest.raises(ModelFileError, match=_named(path) + ".*'model.weights.h5'.*not an HDF5"):
        load_model(path)


def test_a_keras_file_whose_weights_member_is_a_truncated_hdf5_is_refused(files, tmp_path):
    with zipfile.ZipFile(files["iwae.keras"]) as archive:
        weights = archive.read("model.weights.h5")
    path = _rewrite_archive(
        files["iwae.keras"], tmp_path / "t.keras", replace={"model.weights.h5": weights[:2000]}
    )
    with pytest.raises(ModelFileError, match=_named(path) + ".*cannot be read as HDF5"):
        load_model(path)


@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_a_keras_file_missing_a_member_is_refused_naming_it(files, tmp_path, member):
    path = _rewrite_archive(files["iwae.keras"], tmp_path / "m.keras", drop=(member,))
    with pytest.raises(ModelFileError, match=_named(path) + f" lacks the member '{member}'"):
        load_model(path)


def test_a_keras_file_whose_config_is_not_json_is_refused_naming_it(files, tmp_path):
    path = _rewrite_archive(
        files["iwae.keras"], tmp_path / "c.keras", replace={"config.json": b"{not json"}
    )
    with pytest.raises(ModelFileError, match=_named(path) + ".*config.json is not valid JSON"):
        load_model(path)


def test_a_keras_file_with_a_changed_byte_fails_its_crc_check(files, tmp_path):
    data = bytearray(files["iwae.keras"].read_bytes())
    with zipfile.ZipFile(files["iwae.keras"]) as archive:
        info = archive.getinfo("model.weights.h5")
    # The member's data start after its local header (30 bytes, the name, the extra field).
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[offset] ^= 0xFF
    path = tmp_path / "flipped.keras"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=_named(path) + ".*(CRC|damaged zip)"):
        load_model(path)


def test_a_keras_file_of_another_model_class_is_refused_naming_the_class(tmp_path):
    other = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2)])
    path = tmp_path / "sequential.keras"
    other.save(path)
    with pytest.raises(ModelFileError, match=_named(path) + " holds a saved Sequential"):
        load_model(path)


def test_a_config_lacking_the_encoder_is_refused_naming_the_missing_part(files, tmp_path):
    with zipfile.ZipFile(files["iwae.keras"]) as archive:
        config = json.loads(archive.read("config.json"))
    del config["config"]["encoder"]
    path = _rewrite_archive(
        files["iwae.keras"], tmp_path / "e.keras", replace={"config.json": json.dumps(config)}
    )
    with pytest.raises(ModelFileError, match=_named(path) + r".*lacks \['encoder'\]"):
        load_model(path)


def test_a_file_that_is_not_there_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / "absent.keras")):
        load_model(tmp_path / "absent.keras")


def test_load_model_of_a_weights_file_names_the_loader_for_it(files):
    with pytest.raises(ModelFileError, match=r"not a `\.keras` file.*load_weights"):
        load_model(files["iwae.weights.h5"])


def test_a_sound_keras_file_loads_with_the_same_weights_and_bound(files):
    loaded = load_model(files["iwae.keras"])
    assert isinstance(loaded, mco.ImportanceWeightedAutoencoder)
    np.testing.assert_array_equal(loaded(X).numpy(), files["iwae_bound"])


# ------------------------------------------------------------------ 5. weights of other models
def test_weights_of_a_learnable_ciwae_are_refused_by_an_iwae_model_naming_the_cause(files):
    model = _built()
    before = _weights(model)
    with pytest.raises(
        ModelFileError,
        match=_named(files["ciwae.weights.h5"])
        + r".*3 variables in the file and 2 here \(nonfinite_run, nonfinite_steps\).*"
        r"objective.*beta_logit",
    ):
        model.load_weights(files["ciwae.weights.h5"])
    _assert_same(before, _weights(model))  # nothing was loaded


def test_weights_of_an_iwae_are_refused_by_a_learnable_ciwae_model_naming_beta_logit(files):
    model = _built(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    with pytest.raises(
        ModelFileError,
        match=_named(files["iwae.weights.h5"])
        + r".*2 variables in the file and 3 here.*learnable variables \(beta_logit\)",
    ):
        model.load_weights(files["iwae.weights.h5"])


def test_weights_of_a_learnable_ciwae_keras_file_are_refused_by_an_iwae_model(files):
    with pytest.raises(ModelFileError, match=_named(files["ciwae.keras"]) + ".*beta_logit"):
        _built().load_weights(files["ciwae.keras"])


def test_weights_of_another_latent_size_are_refused_naming_the_variables_and_the_network(files):
    model = _built(latent=LATENT + 1)
    before = _weights(model)
    with pytest.raises(
        ModelFileError,
        match=r"other shapes \(decoder/.*: \(3, 8\) in the file, \(4, 8\) here.*different network",
    ):
        model.load_weights(files["iwae.weights.h5"])
    _assert_same(before, _weights(model))


def test_weights_of_a_network_with_another_layer_are_refused_naming_what_is_missing(files):
    model = _built(hidden=(8, 8))
    with pytest.raises(ModelFileError, match=r"missing from the file.*different network"):
        model.load_weights(files["iwae.weights.h5"])


def test_a_config_whose_objective_differs_from_its_weights_names_the_variables(files, tmp_path):
    """keras.models.load_model itself reaches the model's load_own_variables hook."""
    with zipfile.ZipFile(files["ciwae.keras"]) as archive:
        config = json.loads(archive.read("config.json"))
    config["config"]["objective"]["config"]["learnable_beta"] = False
    path = _rewrite_archive(
        files["ciwae.keras"], tmp_path / "edited.keras", replace={"config.json": json.dumps(config)}
    )
    with pytest.raises(ValueError, match=r"3 variables in the file and 2 here.*beta_logit"):
        keras.models.load_model(path)
    with pytest.raises(ModelFileError, match=_named(path) + r".*3 variables in the file"):
        load_model(path)


# ------------------------------------------------------------------ 6. damaged weights files
def test_a_truncated_weights_file_is_refused_naming_it(files, tmp_path):
    path = tmp_path / "t.weights.h5"
    path.write_bytes(files["iwae.weights.h5"].read_bytes()[:3000])
    model = _built()
    before = _weights(model)
    with pytest.raises(
        ModelFileError, match=_named(path) + ".*cannot be read as HDF5.*interrupted"
    ):
        model.load_weights(path)
    _assert_same(before, _weights(model))


def test_a_weights_file_of_garbage_is_refused_naming_it(tmp_path):
    path = tmp_path / "g.weights.h5"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(ModelFileError, match=_named(path) + ".*not an HDF5 file"):
        check_weights_file(path)


def _with_nan(source, target, dataset):
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as handle:
        value = handle[dataset][()]
        handle[dataset][...] = np.full_like(value, np.nan)
    return target


def test_a_nan_beta_logit_in_a_weights_file_is_refused_naming_it(files, tmp_path):
    path = _with_nan(files["ciwae.weights.h5"], tmp_path / "nan.weights.h5", "vars/0")
    model = _built(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    before = _weights(model)
    with pytest.raises(ModelFileError, match=_named(path) + r".*'beta_logit'.*not finite"):
        model.load_weights(path)
    _assert_same(before, _weights(model))
    assert math.isfinite(float(model.objective.beta))


def test_a_nan_beta_logit_in_a_keras_file_is_refused_by_keras_load_model_naming_it(files, tmp_path):
    with zipfile.ZipFile(files["ciwae.keras"]) as archive:
        weights = tmp_path / "w.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    _with_nan(weights, weights, "vars/0")
    path = _rewrite_archive(
        files["ciwae.keras"],
        tmp_path / "nan.keras",
        replace={"model.weights.h5": weights.read_bytes()},
    )
    with pytest.raises(ValueError, match=r"'beta_logit' of the model's objective is nan"):
        keras.models.load_model(path)
    with pytest.raises(ModelFileError, match=_named(path) + r".*'beta_logit'.*not finite"):
        load_model(path)


def test_a_nan_layer_weight_is_refused_naming_its_path(files, tmp_path):
    path = _with_nan(
        files["iwae.weights.h5"], tmp_path / "nan.weights.h5", "encoder/net/output_layer/vars/0"
    )
    with pytest.raises(ModelFileError, match=r"'encoder/net/output_layer/vars/0' holds 48 NaN"):
        _built().load_weights(path)


def test_sound_weights_load_exactly(files):
    model = _built(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    saved = keras.models.load_model(files["ciwae.keras"])
    model.load_weights(files["ciwae.weights.h5"])
    _assert_same(_weights(saved), _weights(model))


def test_a_nan_beta_logit_restored_from_a_checkpoint_is_named_by_check_finite_weights(tmp_path):
    model = _built(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    model.check_finite_weights()  # a sound model passes
    model.objective.beta_logit.assign(np.nan)
    path = tf.train.Checkpoint(model=model).save(tmp_path / "c")
    fresh = _built(mco.CIWAE(2, beta=0.5, learnable_beta=True))
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    with pytest.raises(ValueError, match=r"not finite: beta_logit \(the objective's, = nan\)"):
        fresh.check_finite_weights()
