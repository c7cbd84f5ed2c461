"""`examples/mnist.py` from its command line: bad inputs, the out_dir's lock, resuming,
damaged checkpoints, --help. (A diverging run, which needs no command line, is tested in
process by tests/test_training_in_process.py.)

The battery of bad command lines (`CASES`) runs in ONE subprocess that imports the
script and calls its `main` once per case, as `absl.app.run` would after parsing the
flags: TensorFlow's import is paid once, and each case takes milliseconds. There the
loading of the data is replaced by a trap, so a case that gets past the checks is
caught before anything is trained; every case must exit with status 2 (or absl's 1
for a value it cannot parse), name the flag it is about, and leave its out_dir
uncreated. A few cases also run as real subprocesses, to check the exit status and
message a user sees. The other tests run the script on the bundled MNIST subset,
offline, with tiny settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import rundir  # noqa: E402  (examples/rundir.py: no TensorFlow)

TIMEOUT = 300  # seconds for one run
# The base of every battery case: a valid tiny run the case's flags then override.
BASE = (
    "--nodownload",
    "--train_size=100",
    "--max_steps=2",
    "--batch_size=10",
    "--eval_size=10",
    "--eval_num_samples=64",
    "--eval_chunk_size=32",
    "--log_every=1",
    "--checkpoint_every=1",
)
# The runs of the lifecycle tests: 10-step epochs of batch 10.
TINY = (
    "--nodownload",
    "--train_size=100",
    "--batch_size=10",
    "--eval_size=10",
    "--eval_num_samples=64",
    "--log_every=1",
    "--checkpoint_every=5",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad command line: its arguments, and what its message must name."""

    args: tuple[str, ...]
    expect: tuple[str, ...]  # every one appears in the message (the flags)
    env: tuple[tuple[str, str], ...] = ()  # extra environment (TF_CONFIG)
    id: str = ""


def _tf_config(workers: int, index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in range(20001, 20001 + workers)]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def case(*args: str, expect: str | tuple[str, ...] | None = None, env=(), id=None) -> Case:
    """A case whose message must name `expect` (default: the last argument's flag)."""
    if expect is None:
        expect = args[-1].split("=")[0]
    expect = (expect,) if isinstance(expect, str) else expect
    return Case(tuple(args), expect, tuple(env), id or " ".join(args))


CASES = [
    # counts and sizes
    case("--batch_size=0"),
    case("--batch_size=-1"),
    case("--batch_size=abc"),
    case("--batch_size=2.5"),
    case("--train_size=10", "--batch_size=20", expect="--batch_size"),
    case("--train_size=-5"),
    case("--train_size=0"),
    case("--train_size=100000"),
    case("--eval_size=0"),
    case("--eval_size=-1"),
    case("--eval_size=20000"),
    case("--epochs=0"),
    case("--epochs=-1"),
    case("--max_steps=0"),
    case("--max_steps=-3"),
    case("--latent_size=0"),
    case("--latent_size=-3"),
    case("--hidden_units=0"),
    case("--hidden_units=-1"),
    case("--eval_num_samples=0"),
    case("--eval_num_samples=-5"),
    case("--eval_chunk_size=0"),
    case("--eval_chunk_size=-1"),
    case("--eval_batch_size=0"),
    case("--eval_batch_size=-10"),
    case("--eval_every_epochs=-1"),
    case("--checkpoint_every=0"),
    case("--checkpoint_every=-1"),
    case("--log_every=0"),
    case("--log_every=-5"),
    case("--num_cpu_devices=-1"),
    case("--num_cpu_devices=2", id="--num_cpu_devices=2 without --strategy=mirrored"),
    # numbers
    case("--learning_rate=0"),
    case("--learning_rate=-0.001"),
    case("--learning_rate=nan"),
    case("--learning_rate=inf"),
    case("--seed=-1"),
    case("--seed=2147483648"),
    case("--seed=1.5"),
    # the objective
    case("--num_samples=0"),
    case("--num_samples=-4"),
    case("--num_samples=1.5"),
    case("--objective=piwae", "--num_outer=0"),
    case("--objective=miwae", "--num_outer=-2"),
    case("--objective=piwae", "--num_samples=10", "--num_outer=4"),
    case("--objective=miwae", "--num_samples=8", "--num_outer=16"),
    case("--objective=vimco", "--num_samples=1", expect="--num_samples"),
    case("--objective=jvi", "--num_samples=1", expect="--num_samples"),
    case("--objective=ciwae", "--beta=1.5"),
    case("--objective=ciwae", "--beta=-0.1"),
    case("--objective=ciwae", "--beta=nan"),
    case("--objective=ciwae", "--learnable_beta", "--beta=0"),
    case("--objective=dreg", "--alpha=2"),
    case("--objective=dreg", "--alpha=-0.5"),
    case("--objective=vriwae", "--alpha=1"),
    case("--objective=vriwae", "--alpha=abc"),
    case("--objective=nosuch"),
    case("--jvi_dreg=maybe"),
    # the architecture
    case("--architecture=mlp"),
    case("--architecture=two_layer", "--objective=dreg", "--latent_size=10"),
    case("--architecture=sbn", "--objective=iwae", expect=("--architecture", "--objective")),
    case("--architecture=sbn", "--objective=rws", "--hidden_units=10"),
    # the data
    case("--dataset=fashion_mnist"),
    # distribution
    case("--strategy=tpu"),
    case("--strategy=mirrored", "--num_cpu_devices=3", "--batch_size=10", expect="--batch_size"),
    case("--strategy=multi_worker", expect="TF_CONFIG", id="multi_worker, no TF_CONFIG"),
    case(
        "--strategy=multi_worker",
        expect="TF_CONFIG",
        env=(("TF_CONFIG", "{not json"),),
        id="multi_worker, TF_CONFIG not JSON",
    ),
    case(
        "--strategy=multi_worker",
        expect="TF_CONFIG",
        env=(("TF_CONFIG", _tf_config(2, 5)),),
        id="multi_worker, TF_CONFIG task index out of range",
    ),
    case(
        "--strategy=multi_worker",
        expect="TF_CONFIG",
        env=(("TF_CONFIG", json.dumps({"cluster": {"ps": ["h:1"], "worker": ["h:2"]}})),),
        id="multi_worker, TF_CONFIG with a parameter server and no task",
    ),
    case(
        "--strategy=multi_worker",
        "--batch_size=15",
        expect=("--batch_size", "workers"),
        env=(("TF_CONFIG", _tf_config(2, 0)),),
        id="multi_worker, batch not a multiple of the workers",
    ),
    case(
        "--strategy=multi_worker",
        "--num_cpu_devices=2",
        env=(("TF_CONFIG", _tf_config(2, 0)),),
        id="multi_worker with --num_cpu_devices",
    ),
    # the output folder, and what is not a flag
    case("--out_dir=", expect="--out_dir"),
    case("--out_dir={file}", expect="--out_dir", id="--out_dir=<a file>"),
    case("--out_dir={file}/run", expect="--out_dir", id="--out_dir=<a file>/run"),
    case("--batchsize=20", expect="batchsize"),
    case("stray_argument", expect="stray_argument"),
    # several problems at once: all are reported
    case(
        "--batch_size=0",
        "--seed=-1",
        "--log_every=0",
        expect=("--batch_size", "--seed", "--log_every"),
    ),
]

BATTERY_SCRIPT = r"""
import contextlib, io, json, os, pathlib, sys, tempfile

sys.path.insert(0, "examples")
sys.argv = ["mnist.py"]
import mnist  # defines every flag (and imports TensorFlow, once for all cases)
from absl import flags
from mcobjectives.experimental import mnist as experimental_mnist

FLAGS = flags.FLAGS


class DataLoaded(Exception):
    "Raised in place of loading the data: the case got past every check."


def trap(*args, **kwargs):
    raise DataLoaded()


experimental_mnist.load_mnist = trap
results = {}
for case in json.load(sys.stdin):
    tmp = pathlib.Path(tempfile.mkdtemp())
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    out_dir = tmp / "out"
    args = [a.replace("{file}", str(a_file)) for a in case["args"]]
    argv = ["mnist.py", *case["base"], f"--out_dir={out_dir}", *args]
    os.environ.pop("TF_CONFIG", None)
    os.environ.update(case["env"])
    FLAGS.unparse_flags()
    stderr = io.StringIO()
    try:
        remaining = FLAGS(argv)  # what absl.app.run does first
    except flags.Error as error:  # app.run: "FATAL Flags parsing error: ..." and status 1
        result = {"stage": "parse", "status": 1, "message": str(error)}
    else:
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                mnist.main(remaining)
            result = {"stage": "ran", "status": 0}
        except SystemExit as exit:
            result = {"stage": "checks", "status": exit.code}
        except DataLoaded:
            result = {"stage": "data loaded", "status": 0}
        except Exception as error:
            result = {"stage": "crash", "status": None, "error": repr(error)}
        result["message"] = stderr.getvalue()
    result["out_dir_created"] = out_dir.exists()
    results[case["id"]] = result
print("RESULTS " + json.dumps(results))
"""


def _offline_env(tmp: pathlib.Path) -> dict:
    empty = tmp / "empty_tfds"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "TFDS_DATA_DIR": str(empty), "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> dict:
    """Every case of `CASES` through mnist.py's main, in one process: results by id."""
    tmp = tmp_path_factory.mktemp("battery")
    cases = [
        {"id": c.id, "args": list(c.args), "env": dict(c.env), "base": list(BASE)} for c in CASES
    ]
    control = {"id": "control", "args": [], "env": {}, "base": list(BASE)}
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-c", BATTERY_SCRIPT],
        input=json.dumps([*cases, control]),
        cwd=ROOT,
        env=_offline_env(tmp),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULTS ")]
    assert process.returncode == 0 and lines, process.stderr[-5000:]
    print(f"\n{len(cases)} bad command lines checked in {time.monotonic() - start:.1f} s")
    return json.loads(lines[-1].removeprefix("RESULTS "))


def test_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES) >= 50


def test_battery_accepts_the_base_flags(battery):
    """The harness itself: the valid base command line gets past the checks to the data."""
    assert battery["control"]["stage"] == "data loaded", battery["control"]


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_command_line_is_refused_at_startup(bad, battery):
    """Non-zero status, a message naming the flag, before the data and the out_dir."""
    result = battery[bad.id]
    assert result["stage"] in ("parse", "checks"), result
    assert result["status"] in (1, 2), result  # absl's parse errors: 1; the checks: 2
    for name in bad.expect:
        assert name in result["message"], (name, result["message"])
    assert not result["out_dir_created"], result
    if result["stage"] == "checks":
        # One line per problem, no traceback.
        assert "Traceback" not in result["message"], result["message"]
        assert "mnist.py: error: " in result["message"], result["message"]


# --------------------------------------------------------------- real subprocess runs
class Run:
    """`python examples/mnist.py ...` in the background, its output in files."""

    def __init__(self, args, out_dir: pathlib.Path, env: dict, label: str):
        self.out_dir = out_dir
        self.command = [sys.executable, "examples/mnist.py", *args, f"--out_dir={out_dir}"]
        self.logs = {s: out_dir.parent / f"{label}.{s}" for s in ("stdout", "stderr")}
        with self.logs["stdout"].open("w") as stdout, self.logs["stderr"].open("w") as stderr:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr
            )
        self.started = time.monotonic()

    def output(self, stream: str = "stdout") -> str:
        return self.logs[stream].read_text(errors="replace")

    def tail(self) -> str:
        parts = [f"$ {' '.join(self.command)}  (exit {self.process.poll()})"]
        for stream in ("stdout", "stderr"):
            parts += [f"----- {stream}", *self.output(stream).splitlines()[-25:]]
        return "\n".join(parts)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"timed out after {TIMEOUT} s\n{self.tail()}")

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def error_line(self) -> str:
        lines = [line for line in self.output("stderr").splitlines() if ": error: " in line]
        return lines[-1] if lines else ""


SUBPROCESS_CASES = {
    "batch_size=0": (("--batch_size=0",), 2, ("--batch_size=0", "at least 1")),
    # The bundled subset has 5000 training images: checked once it is loaded.
    "train_size beyond the bundled data": (
        ("--train_size=6000",),
        2,
        ("--train_size=6000", "5000", "mnist-bundled-subset"),
    ),
}


@pytest.fixture(scope="module")
def background(tmp_path_factory) -> dict[str, Run]:
    """The runs that need nothing but a fresh out_dir, started together so that the
    machine's cores share them out: the bad command lines of `SUBPROCESS_CASES` and the
    run the resume tests start from."""
    tmp = tmp_path_factory.mktemp("background")
    env = _offline_env(tmp)
    runs = {
        name: Run((*BASE, *args), tmp / _slug(name), env, label=_slug(name))
        for name, (args, _, _) in SUBPROCESS_CASES.items()
    }
    runs["trained"] = Run((*TINY, "--max_steps=10"), tmp / "trained", env, label="trained")
    yield runs
    for run in runs.values():  # what a failed test left running
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_bad_command_line_from_the_shell(name, background):
    """What a user sees: exit status 2, one "mnist.py: error: ..." line, nothing trained."""
    run = background[name]
    _, status, phrases = SUBPROCESS_CASES[name]
    assert run.wait() == status, run.tail()
    message = run.error_line()
    assert message.startswith("mnist.py: error: "), run.tail()
    for phrase in phrases:
        assert phrase in message, run.tail()
    assert "Traceback" not in run.output("stderr"), run.tail()
    assert "steps of batch" not in run.output(), run.tail()  # training never started
    assert not run.out_dir.exists(), run.tail()


def _defined_flags(script: str) -> list[str]:
    """The names of the flags a script of examples/ defines, read from its source."""
    source = (EXAMPLES / script).read_text()
    return re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source)


def test_help_lists_every_flag(tmp_path):
    """--help shows every flag of the script and of cli.py (absl exits with 1 after
    printing it)."""
    result = subprocess.run(
        [sys.executable, "examples/mnist.py", "--help"],
        cwd=ROOT,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    text = result.stdout
    assert result.returncode in (0, 1), result.stderr[-3000:]
    names = _defined_flags("cli.py") + _defined_flags("mnist.py")
    assert len(names) >= 28 and "architecture" in names, names
    for name in names:
        assert f"--{name}:" in text or f"--[no]{name}:" in text, name
    assert "multi_worker" in text and "TF_CONFIG" in text


# ------------------------------------------------------------------- the lock
def test_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    """rundir.OutDirLock: a second process is refused while the first lives (naming its
    PID); once the first is killed, the next takes over its stale lock and says so."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, 'examples'); import rundir; "
            f"rundir.OutDirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
            "time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = rundir.OutDirLock(tmp_path)
        with pytest.raises(rundir.OutDirInUse, match=f"process {holder.pid} on "):
            lock.acquire()
        assert not lock.held
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rundir.OutDirLock(tmp_path) as lock:
        assert lock.held
        assert f"process {holder.pid} on" in lock.describe_stale()
        assert json.loads(lock.owner())["pid"] == os.getpid()
    assert lock.owner() == ""  # released: emptied, and free to take again
    with rundir.OutDirLock(tmp_path) as again:
        assert again.held and again.stale_owner is None


# Slow: two training processes; the lock's refusal is checked in process just above.
@pytest.mark.slow
def test_second_run_in_the_same_out_dir_is_refused(tmp_path):
    """While a run trains in an out_dir, a second one there exits 1 naming its PID."""
    env = _offline_env(tmp_path)
    out_dir = tmp_path / "run"
    first = Run((*TINY, "--max_steps=100000"), out_dir, env, label="first")
    lock = out_dir / rundir.LOCK_NAME
    while not (lock.exists() and lock.read_text().strip()):
        assert first.process.poll() is None, first.tail()
        assert first.seconds() < TIMEOUT, first.tail()
        time.sleep(0.1)
    second = Run((*TINY, "--max_steps=100000"), out_dir, env, label="second")
    try:
        assert second.wait() == 1, second.tail()
        assert first.process.poll() is None, first.tail()  # still training
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    message = second.error_line()
    assert f"--out_dir={out_dir} is in use by process {first.process.pid}" in message
    assert "choose another --out_dir" in message


# ------------------------------------------------------- resuming, damaged checkpoints
@pytest.fixture(scope="module")
def trained(background) -> pathlib.Path:
    """An out_dir after 10 steps (checkpoints 5 and 10, an evaluation at 10)."""
    run = background["trained"]
    assert run.wait() == 0, run.tail()
    return run.out_dir


def test_resume_with_other_run_flags_is_refused(trained, tmp_path):
    """A rerun that would change the objective or the seed exits 1 naming those flags,
    and leaves the run's files alone."""
    before = {p.name: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    run = Run(
        (*TINY, "--max_steps=20", "--objective=dreg", "--seed=7", "--log_every=2"),
        trained,
        _offline_env(tmp_path),
        label="mismatch",
    )
    assert run.wait() == 1, run.tail()
    stderr = run.output("stderr")
    assert f"--out_dir={trained} holds a run that this command would change" in stderr
    assert "--objective: 'iwae' in the run, 'dreg' now" in stderr, run.tail()
    assert "--seed: 0 in the run, 7 now" in stderr, run.tail()
    assert "--log_every" not in stderr.split("may change only")[0]  # allowed to change
    assert "BUNDLED SUBSET" not in run.output()  # refused before loading the data
    after = {p.name: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    assert after == before
    config = json.loads((trained / rundir.CONFIG_NAME).read_text())
    assert config["flags"]["objective"] == "iwae" and config["flags"]["seed"] == 0


def test_damaged_checkpoint_falls_back_and_orphans_are_removed(trained, tmp_path):
    """A truncated latest checkpoint is moved aside with a warning and the run resumes
    from the one before; what an interrupted save left behind is removed; a stale lock
    is taken over. The rerun changes only flags a resumed run may change."""
    out_dir = tmp_path / "run"
    shutil.copytree(trained, out_dir)
    checkpoints = out_dir / "checkpoints"
    data = checkpoints / "ckpt-10.data-00000-of-00001"
    with data.open("r+b") as file:
        file.truncate(data.stat().st_size // 2)
    orphans = [
        checkpoints / "ckpt-15_temp",
        checkpoints / "checkpoint.tmp5e1f0c2a9b",
        checkpoints / "ckpt-99.data-00000-of-00001",
        out_dir / "metrics.json.tmp",
    ]
    orphans[0].mkdir()
    (orphans[0] / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    for orphan in orphans[1:]:
        orphan.write_bytes(b"\0" * 64)
    dead = {"pid": 2**22 + 1, "host": "elsewhere", "started": "2026-01-01T00:00:00"}
    (out_dir / rundir.LOCK_NAME).write_text(json.dumps(dead))

    run = Run(
        (*TINY, "--max_steps=15", "--log_every=5", "--eval_num_samples=100"),
        out_dir,
        _offline_env(tmp_path),
        label="resumed",
    )
    assert run.wait() == 0, run.tail()
    stdout, stderr = run.output(), run.output("stderr")
    assert "Resuming from step 5" in stdout, run.tail()
    assert "WARNING: checkpoint ckpt-10 is damaged" in stderr, run.tail()
    assert "fell back to an older one" in stderr, run.tail()
    assert "took over the stale lock of process 4194305 on elsewhere" in stdout, run.tail()
    assert "Removed 4 temporary file(s)" in stderr, run.tail()
    for orphan in orphans:
        assert not orphan.exists(), orphan
    assert sorted(p.name for p in (checkpoints / "corrupt").iterdir()) == [
        "ckpt-10.data-00000-of-00001",
        "ckpt-10.index",
    ]
    assert (checkpoints / "ckpt-15.index").exists()
    state = (checkpoints / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-15"' in state, state
    metrics = json.loads((out_dir / "metrics.json").read_text())
    # Step 10's evaluation came after the checkpoint resumed from: it was done again.
    assert [e["step"] for e in metrics["evaluations"]] == [10, 15]
    assert metrics["evaluations"][-1]["log_px_num_samples"] == 100
