"""The examples at their edges (issue 17): memory and work refused at startup, damaged
files (metrics.json, a TFDS folder) and full disks handled, --help, -KL with few samples,
and the out_dir's lock file.

Every case runs in this process (`checks.flag_problems`, `train.run` with a tiny
`Config` on the bundled MNIST subset, `rundir`, `mnist.load_mnist`), but for --help,
which runs the script once as a user would. The command-line battery of
tests/test_cli_inputs.py is not repeated here.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mcobjectives import limits
from mcobjectives.experimental import mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import checks  # noqa: E402  (examples/checks.py)
import cli  # noqa: E402
import rundir  # noqa: E402
import train  # noqa: E402
from config import Config, FlagError, RunError  # noqa: E402

mnist_script = importlib.import_module("mnist")  # examples/mnist.py: its model builders
assert pathlib.Path(mnist_script.__file__).parent == EXAMPLES, mnist_script.__file__

# 100 images of batch 10: 10-step epochs; checkpoints at 5 and 10, an evaluation at 10.
TINY = Config(
    objective="iwae",
    num_samples=4,
    train_size=100,
    batch_size=10,
    max_steps=10,
    eval_every_epochs=1,
    eval_size=10,
    eval_batch_size=10,
    eval_num_samples=64,
    eval_chunk_size=64,
    log_every=5,
    checkpoint_every=5,
    jit_compile=False,  # the cases are about files, not speed: no XLA compile
    download=False,
)
# A fixed limit for the cases that are about the flags, not about this machine's memory.
LIMIT = "4GiB"


class DataLoaded(Exception):
    """Raised in place of loading the data: the run got past its startup checks."""


@pytest.fixture
def no_data(monkeypatch):
    """`mnist.load_mnist` replaced by a trap: a refusal must come before the data."""

    def trap(*args, **kwargs):
        raise DataLoaded()

    monkeypatch.setattr(mnist, "load_mnist", trap)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> mnist.MnistData:
    empty = tmp_path_factory.mktemp("no_tfds")
    data = mnist.load_mnist("mnist", data_dir=str(empty), download=False, log=lambda _: None)
    assert data.source == mnist.BUNDLED_SOURCE
    return data


def _run(config: Config, data: mnist.MnistData | None = None) -> dict:
    return train.run(
        config,
        build_model=mnist_script.build_model,
        to_batch=mnist_script.to_batch,
        extra_problems=mnist_script.architecture_problems,
        data=data,
    )


def _refused(config: Config, tmp_path: pathlib.Path) -> str:
    """The message of the FlagError that `train.run` raises at startup, before the data
    (the `no_data` trap) and before the out_dir is made."""
    out_dir = tmp_path / "run"
    with limits.sample_memory_limit_scope(LIMIT):
        with pytest.raises(FlagError) as error:
            _run(dataclasses.replace(config, out_dir=str(out_dir)))
    assert not out_dir.exists()
    return str(error.value)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> pathlib.Path:
    """An out_dir after 10 steps of TINY: checkpoints 5 and 10, an evaluation at 10."""
    out_dir = tmp_path_factory.mktemp("trained") / "run"
    _run(dataclasses.replace(TINY, out_dir=str(out_dir)), data)
    return out_dir


def _copy(trained: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    out_dir = tmp_path / "run"
    shutil.copytree(trained, out_dir)
    return out_dir


def _resume(out_dir: pathlib.Path, data, **changes) -> dict:
    return _run(dataclasses.replace(TINY, out_dir=str(out_dir), **changes), data)


# ------------------------------------------------------------- memory and work at startup
def test_ten_million_samples_are_refused_at_startup_with_the_bytes_limit_and_fix(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, num_samples=10_000_000), tmp_path)
    assert "--num_samples=10000000 with --batch_size=10" in message
    assert "would need 460 GiB" in message  # 10^8 samples of 4.82 KiB
    assert "sample-memory limit of 4 GiB" in message
    assert "lower --num_samples (at most 87" in message and "MCOBJECTIVES_SAMPLE_MEMORY" in message


def test_a_num_samples_beyond_any_integer_type_is_refused_not_overflowed(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, num_samples=10**30), tmp_path)
    assert f"--num_samples={10**30}" in message and "sample-memory limit" in message


def test_a_batch_of_the_whole_training_set_at_k_64_is_refused_naming_both_flags(tmp_path, no_data):
    config = dataclasses.replace(TINY, num_samples=64, batch_size=60000, train_size=None)
    message = _refused(config, tmp_path)
    assert "--num_samples=64 with --batch_size=60000" in message
    assert "3,840,000 samples" in message and "17.7 GiB" in message
    assert "lower --num_samples (at most 14 at this --batch_size)" in message


def test_a_batch_too_large_for_even_one_sample_is_told_to_lower_the_batch(tmp_path, no_data):
    config = dataclasses.replace(TINY, batch_size=5000, train_size=None)
    with limits.sample_memory_limit_scope("20MiB"):
        [problem] = checks.memory_problems(config)
    fits = 20 * 2**20 // (checks.sample_floats(config) * 4)  # 4248 samples of 4.82 KiB
    assert fits == 4248 and config.num_samples * 5000 > fits >= 1
    assert f"lower --batch_size (at most {fits} samples fit a step)" in problem


def test_an_evaluation_of_a_billion_samples_per_image_is_refused_as_endless(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, eval_num_samples=10**9, eval_size=None), tmp_path)
    assert "--eval_num_samples=1000000000 on 10000 test images" in message
    assert "10,000,000,000,000 draws per evaluation" in message
    assert "at most --eval_num_samples=214748" in message


def test_the_draws_of_an_evaluation_count_only_the_evaluated_images(tmp_path, no_data):
    """--eval_size=1 allows a larger K: the limit is on the draws, K times the images."""
    config = dataclasses.replace(TINY, eval_num_samples=10**9, eval_size=1, eval_chunk_size=500)
    with limits.sample_memory_limit_scope(LIMIT):
        assert checks.memory_problems(config) == []
    message = _refused(dataclasses.replace(config, eval_num_samples=2**31), tmp_path)
    assert "--eval_num_samples=2147483648 on 1 test images" in message


def test_a_chunk_of_a_million_samples_is_refused_naming_the_chunk_flag(tmp_path, no_data):
    config = dataclasses.replace(TINY, eval_num_samples=10**6, eval_chunk_size=10**9)
    message = _refused(config, tmp_path)
    assert "--eval_chunk_size=1000000000 with --eval_num_samples=1000000" in message
    assert "1000000 samples of 4.82 KiB for each of 10 test images" in message
    assert "give at most --eval_chunk_size=87013" in message


def test_a_million_hidden_units_are_refused_naming_the_parameters(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, hidden_units=10**6), tmp_path)
    assert "--latent_size=50 with --hidden_units=1000000" in message
    assert "2,001,722,000,884 parameters" in message and "lower --hidden_units" in message
    assert "--num_samples=" not in message  # its consequence is not reported again


def test_a_billion_latents_are_refused_naming_latent_size(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, latent_size=10**9), tmp_path)
    assert "--latent_size=1000000000" in message and "parameters" in message


def test_the_library_limit_is_the_one_applied_and_can_be_raised(monkeypatch):
    monkeypatch.delenv(limits.ENVIRONMENT_VARIABLE, raising=False)
    config = dataclasses.replace(TINY, num_samples=64, batch_size=60000, train_size=None)
    with limits.sample_memory_limit_scope("inf"):
        assert checks.memory_problems(config) == []
    with limits.sample_memory_limit_scope("64GiB"):
        assert checks.memory_problems(config) == []
    with limits.sample_memory_limit_scope("1MiB"):
        [problem] = checks.memory_problems(Config())
    assert "set with mcobjectives.limits.set_sample_memory_limit" in problem


def test_the_papers_settings_fit_the_limit():
    """The control: the defaults (K = 64, batch 20, log p^(x) with 5000 in chunks of 500)
    and the structured and two-layer models pass."""
    with limits.sample_memory_limit_scope(LIMIT):
        assert checks.memory_problems(Config()) == []
        assert checks.memory_problems(Config(task="structured_mnist", batch_size=32)) == []
        assert checks.memory_problems(Config(architecture="two_layer")) == []
        assert checks.memory_problems(Config(architecture="sbn", objective="vimco")) == []


# --------------------------------------------------------------- -KL with few samples
def test_eval_num_samples_below_the_bounds_64_is_refused_naming_both(tmp_path, no_data):
    message = _refused(dataclasses.replace(TINY, eval_num_samples=8), tmp_path)
    assert "--eval_num_samples=8: must be at least 64" in message
    assert "IWAE-64 bound" in message and "-KL comes out positive" in message


def test_eval_num_samples_of_64_passes_and_63_does_not(tmp_path, no_data):
    with pytest.raises(DataLoaded):
        _run(dataclasses.replace(TINY, eval_num_samples=64, out_dir=str(tmp_path / "ok")))
    assert "--eval_num_samples=63" in _refused(
        dataclasses.replace(TINY, eval_num_samples=63), tmp_path
    )


def test_the_evaluator_refuses_fewer_samples_than_its_bound_naming_num_samples():
    model = mnist.one_layer(mnist_script.mco.IWAE(4), latent_size=2, hidden_units=4)
    with pytest.raises(ValueError, match=r"num_samples=8: log p\^\(x\) needs at least 64"):
        mnist.make_evaluator(model, num_samples=8)
    with pytest.raises(TypeError, match="num_samples must be an integer or None"):
        mnist.make_evaluator(model, num_samples=100.0)
    mnist.make_evaluator(model, num_samples=None)  # the bound alone
    mnist.make_evaluator(model, num_samples=mnist.BOUND_SAMPLES)


def test_neg_kl_is_negative_with_at_least_the_bounds_samples(data):
    """With K >= 64, -KL = IWAE-64 - log p^(x) <= 0 (here by far: an untrained model)."""
    tf.keras.utils.set_random_seed(0)
    model = mnist.one_layer(mnist_script.mco.IWAE(4), data.train.mean(axis=0))
    batches = mnist.test_batches(data.test[:20], binarized=False, batch_size=20)
    result = mnist.evaluate(model, batches, num_samples=256, chunk_size=256)
    assert result["neg_kl"] < 0, result
    assert result["neg_kl"] == pytest.approx(result["iwae64"] - result["log_px"], abs=1e-3)


# ------------------------------------------------------------------ a damaged metrics.json
def _assert_resumed_with_complete_metrics(out_dir, metrics, original):
    assert [e["step"] for e in metrics["evaluations"]] == [10, 20]
    rebuilt, new = metrics["evaluations"]
    assert rebuilt["rebuilt_from"] == "tensorboard"
    for key in ("iwae64", "log_px", "neg_kl", "ess_fraction"):  # float32 in the summaries
        assert rebuilt[key] == pytest.approx(original["evaluations"][0][key], rel=1e-6)
    assert rebuilt["active_units"] == original["evaluations"][0]["active_units"]
    assert "rebuilt_from" not in new and new["log_px_num_samples"] == 64
    assert metrics["train"]["steps"] == 20
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics


def test_a_garbage_metrics_json_is_quarantined_and_rebuilt_on_resume(
    trained, data, tmp_path, capsys
):
    """The resume goes on from the checkpoints; the evaluation of step 10, lost with the
    file, is rebuilt from the TensorBoard summaries; the bytes are kept aside."""
    out_dir = _copy(trained, tmp_path)
    path = out_dir / "metrics.json"
    original = json.loads(path.read_text())
    path.write_bytes(b"\x00\xff garbage \x89PNG")
    metrics = _resume(out_dir, data, max_steps=20)
    stderr = capsys.readouterr().err
    assert f"WARNING: {path} is damaged (UnicodeDecodeError" in stderr
    assert "moved it to metrics.json.corrupt" in stderr
    assert (out_dir / "metrics.json.corrupt").read_bytes() == b"\x00\xff garbage \x89PNG"
    _assert_resumed_with_complete_metrics(out_dir, metrics, original)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(None, "JSONDecodeError", id="truncated to half"),
        pytest.param(b"[1, 2, 3]", "a JSON list, not an object", id="a JSON list"),
        pytest.param(
            b'{"evaluations": [{"iwae64": -90.0}]}',
            "not a list of objects with an integer 'step'",
            id="an evaluation without its step",
        ),
        pytest.param(b'{"train": 3}', "its 'train' is not an object", id="train not an object"),
    ],
)
def test_a_damaged_metrics_json_is_quarantined_naming_the_damage(
    damage, problem, trained, tmp_path
):
    out_dir = _copy(trained, tmp_path)
    path = out_dir / "metrics.json"
    damaged = path.read_bytes()[: path.stat().st_size // 2] if damage is None else damage
    path.write_bytes(damaged)
    warnings = []
    assert rundir.load_metrics(out_dir, warnings.append) == ({}, True)
    assert (out_dir / "metrics.json.corrupt").read_bytes() == damaged and not path.exists()
    [warning] = warnings
    assert f"{path} is damaged" in warning and problem in warning


def test_an_intact_metrics_json_is_read_as_it_is(trained):
    metrics, damaged = rundir.load_metrics(trained, pytest.fail)
    assert not damaged and [e["step"] for e in metrics["evaluations"]] == [10]


def test_a_second_damaged_metrics_json_keeps_the_first_one_aside(tmp_path):
    (tmp_path / "metrics.json.corrupt").write_text("the first")
    (tmp_path / "metrics.json").write_text("{the second")
    warnings = []
    assert rundir.load_metrics(tmp_path, warnings.append) == ({}, True)
    assert (tmp_path / "metrics.json.corrupt").read_text() == "the first"
    assert (tmp_path / "metrics.json.corrupt.1").read_text() == "{the second"
    assert not (tmp_path / "metrics.json").exists() and "JSONDecodeError" in warnings[0]


# --------------------------------------------------------------- a damaged TFDS folder
@pytest.fixture
def tfds_copy(tmp_path) -> pathlib.Path:
    """A copy of the prepared MNIST's metadata (from TFDS_DATA_DIR), without its records."""
    source = pathlib.Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    versions = sorted((source / "mnist").glob("*/dataset_info.json"))
    if not versions:
        pytest.skip(f"no prepared mnist in {source} to copy the metadata of")
    folder = tmp_path / "tfds" / "mnist" / versions[-1].parent.name
    folder.mkdir(parents=True)
    for path in versions[-1].parent.glob("*.json"):
        shutil.copy(path, folder)
    return folder


@pytest.mark.parametrize(
    "damage",
    ["truncated records", "garbage records", "garbage dataset_info.json", "records missing"],
)
def test_a_damaged_tfds_folder_falls_back_to_the_bundled_subset_with_the_banner(damage, tfds_copy):
    for split in ("train", "test"):
        record = tfds_copy / f"mnist-{split}.tfrecord-00000-of-00001"
        if damage == "truncated records":  # a valid start, cut short
            record.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 20)
        elif damage == "garbage records":
            record.write_bytes(np.random.default_rng(0).bytes(4096))
    if damage == "garbage dataset_info.json":
        (tfds_copy / "dataset_info.json").write_text("{not json")
    banners = []
    data = mnist.load_mnist(
        "mnist", data_dir=str(tfds_copy.parents[1]), download=True, log=banners.append
    )
    assert data.source == mnist.BUNDLED_SOURCE and len(data.train) == 5000
    [banner] = banners
    assert "BUNDLED SUBSET" in banner and "cannot be read" in banner
    assert str(tfds_copy.parents[1]) in banner and "delete that folder" in banner


# --------------------------------------------------------------------- a full disk
def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_names_the_out_dir_and_keeps_the_last_one(
    trained, data, tmp_path, monkeypatch
):
    out_dir = _copy(trained, tmp_path)
    save = tf.train.CheckpointManager.save

    def full_at_15(self, checkpoint_number=None, **kwargs):
        if checkpoint_number != 15:
            return save(self, checkpoint_number=checkpoint_number, **kwargs)
        # What TensorFlow's SaveV2 leaves when the disk fills halfway through.
        (out_dir / "checkpoints" / "ckpt-15.data-00000-of-00001").write_bytes(b"\0" * 100)
        (out_dir / "checkpoints" / "ckpt-15_temp").mkdir()
        raise tf.errors.ResourceExhaustedError(
            None, None, "ckpt-15_temp/part-00000; No space left on device"
        )

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_at_15)
    with pytest.raises(RunError) as error:
        _resume(out_dir, data, max_steps=20)
    message = str(error.value)
    assert f"the disk of --out_dir={out_dir} is full" in message
    assert "writing checkpoint ckpt-15 failed" in message and "Free some space" in message
    assert "The latest checkpoint is still step 10, intact" in message
    assert "a checkpoint of this run takes about" in message
    latest = tf.train.latest_checkpoint(str(out_dir / "checkpoints"))
    assert pathlib.Path(latest).name == "ckpt-10"
    assert sorted(p.name for p in (out_dir / "checkpoints").glob("ckpt-15*")) == []
    assert not (out_dir / rundir.LOCK_NAME).exists()


def test_a_full_disk_while_writing_the_metrics_keeps_the_previous_ones(
    trained, data, tmp_path, monkeypatch
):
    out_dir = _copy(trained, tmp_path)
    before = (out_dir / "metrics.json").read_text()
    write_text = pathlib.Path.write_text

    def full_for_metrics(self, text, *args, **kwargs):
        if self.name == "metrics.json.tmp":
            write_text(self, text[:10], *args, **kwargs)  # the start, then no space
            _full_disk()
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_for_metrics)
    with pytest.raises(RunError, match=r"is full: writing metrics\.json failed \(OSError"):
        _resume(out_dir, data, max_steps=20)
    assert (out_dir / "metrics.json").read_text() == before
    assert not (out_dir / "metrics.json.tmp").exists()
    latest = tf.train.latest_checkpoint(str(out_dir / "checkpoints"))
    assert pathlib.Path(latest).name == "ckpt-15"  # saved before the evaluation of step 20


def test_a_full_disk_at_the_first_start_names_config_json(data, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "write_json_atomically", _full_disk)
    out_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"is full: writing config\.json failed") as error:
        _run(dataclasses.replace(TINY, out_dir=str(out_dir)), data)
    assert "No checkpoint was written yet" in str(error.value)
    assert not (out_dir / rundir.LOCK_NAME).exists()


def test_a_write_refused_for_another_reason_is_not_called_a_full_disk(
    trained, data, tmp_path, monkeypatch
):
    out_dir = _copy(trained, tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", denied)
    with pytest.raises(RunError) as error:
        _resume(out_dir, data, max_steps=15)
    message = str(error.value)
    assert f"writing checkpoint ckpt-15 in --out_dir={out_dir} failed" in message
    assert "PermissionError" in message and "is full" not in message


# ------------------------------------------------------------------------ the lock
def test_a_clean_run_leaves_no_lock_file(trained):
    assert (trained / "metrics.json").exists()
    assert not (trained / rundir.LOCK_NAME).exists()


def test_a_run_refused_under_the_lock_leaves_no_lock_file(trained, data, tmp_path):
    """A resume refused once the data are loaded (the run's data differ) releases it."""
    out_dir = _copy(trained, tmp_path)
    config = json.loads((out_dir / rundir.CONFIG_NAME).read_text())
    config["data"] = "mnist"
    (out_dir / rundir.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(RunError, match="the data: 'mnist' in the run"):
        _resume(out_dir, data, max_steps=20)
    assert not (out_dir / rundir.LOCK_NAME).exists()


def test_a_lock_file_removed_between_open_and_lock_is_not_trusted(tmp_path, monkeypatch):
    """The race that removing the file on release opens: B opens .lock, A releases
    (removing it), B locks the removed file. B must lock the file at the path instead,
    so that a third process C cannot lock it too."""
    first = rundir.OutDirLock(tmp_path).acquire()
    try_lock = rundir._try_lock
    calls = []

    def release_first_then_lock(fd):
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # between B's open and B's lock
        return try_lock(fd)

    monkeypatch.setattr(rundir, "_try_lock", release_first_then_lock)
    second = rundir.OutDirLock(tmp_path).acquire()
    monkeypatch.setattr(rundir, "_try_lock", try_lock)
    assert len(calls) == 2 and second.held
    assert os.fstat(second._fd).st_ino == os.stat(second.path).st_ino
    with pytest.raises(rundir.OutDirInUse, match=f"process {os.getpid()} on "):
        rundir.OutDirLock(tmp_path).acquire()
    second.release()
    assert not second.path.exists()


# ------------------------------------------------------------------------ --help
def test_help_exits_zero_from_the_shell(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/mnist.py", "--help"],
        cwd=ROOT,
        env={**os.environ, "TFDS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--eval_num_samples:" in result.stdout and "--architecture:" in result.stdout


@pytest.mark.parametrize(
    ("flag", "shown"),
    [
        ("--helpshort", "Try --helpfull"),
        ("--helpfull", "eval_num_samples"),
        ("--helpxml", "<flag>"),
    ],
)
def test_the_other_help_flags_exit_zero(flag, shown, capsys):
    from absl import app, flags

    app.define_help_flags()
    try:
        with pytest.raises(SystemExit) as exit:
            cli._parse_flags(["mnist.py", flag])
    finally:
        flags.FLAGS.unparse_flags()
    assert exit.value.code == 0
    assert shown in capsys.readouterr().out


def test_a_bad_flag_value_still_exits_one_naming_it(capsys):
    from absl import app, flags

    app.define_help_flags()
    try:
        with pytest.raises(SystemExit) as exit:
            cli._parse_flags(["mnist.py", "--batch_size=abc"])
    finally:
        flags.FLAGS.unparse_flags()
    assert exit.value.code == 1
    assert "--batch_size=abc" in capsys.readouterr().err
