"""The sigmoid belief net at one equal short budget: VIMCO, RWS, TVO, OVIS, DisARM, 3 seeds.

    python benchmarks/sbn_objectives.py                        # the stated budget
    python benchmarks/sbn_objectives.py --objectives=vimco,rws --seeds=1 --steps=50 \\
        --eval_size=20 --eval_num_samples=64 --out_dir=/tmp/quick

Each run is the example itself, one subprocess per (objective, seed):

    python examples/mnist.py --architecture=sbn --objective=<name> --num_samples=<K> \\
        --max_steps=<steps> --batch_size=<batch> --seed=<seed> --eval_size=<n> \\
        --eval_num_samples=<K_eval> --out_dir=<run_dir>/<name>_seed<seed>

so every objective trains the example's model (Mnih & Rezende's 200-200-784 sigmoid
belief net, linear-sigmoid q(z1|x) q(z2|z1)) on dynamically binarized MNIST with its
optimizer and schedule (Adam(1e-3, epsilon 1e-4); a budget under one epoch stays in
Burda et al.'s first stage), and is evaluated by the example at its last step: test
IWAE-64 and log p^(x) with K = `--eval_num_samples` on the first `--eval_size` test
images, with the same evaluation seeds for every run of a seed. The script reads them
back from <run_dir>/<name>_seed<seed>/metrics.json.

Equal budget: the same steps, batch size and number of log-joint evaluations per data
point and step, `--evaluations` (E). Every objective evaluates log p(x, z) once per
sample, so it gets K = E, but DisARM: DisARM(K) evaluates it at (1 + L) K points for a
q of L Bernoulli layers (its K samples and one antithetic partner per sample and
layer), 3K on this two-layer net, so it gets K = E / 3 (`samples_for`). Its bound is
then of E / 3 samples where the others' is of E; the test metrics are the same for all.

Results go to <out_dir>/results.json: `config` (the budget), `machine` and `runs`, one
record per (objective, seed) written as soon as its run ends: the test metrics, the
run's wall time (the subprocess, startup and evaluation included) and its training
steps per second. An interrupted invocation keeps the finished runs; a rerun with the
same flags skips them (and the example resumes a run killed halfway from its
checkpoint in <run_dir>); a rerun with another budget in the same folder is refused.
A run that fails is reported with the end of its stderr and not recorded, the others
go on, and the script exits with 1. `figure.png` (mean +- standard error per
objective, every seed's value, and the wall time per run) is drawn from results.json
alone (`--redraw`); the run ends by printing the table. Method and measured results:
benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _harness
import numpy as np
from absl import app, flags

ROOT = _harness.ROOT
EXAMPLE = ROOT / "examples" / "mnist.py"
OBJECTIVES = ("vimco", "rws", "tvo", "ovis", "disarm")
# Log-joint evaluations per sample: DisARM evaluates each sample and one antithetic
# partner per Bernoulli layer of q (its docstring: (1 + L) K points), L = 2 for the SBN.
SBN_LAYERS = 2
EVALUATIONS_PER_SAMPLE = {"disarm": 1 + SBN_LAYERS}
METRICS = ("iwae64", "log_px", "neg_kl", "ess_fraction", "active_units")
TIMES = ("wall_seconds", "steps_per_second")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags (only when run as a script: importing is side-free)."""
    flags.DEFINE_list("objectives", list(OBJECTIVES), "Registered objectives to run.")
    flags.DEFINE_integer("seeds", 3, "Seeds per objective (0, 1, ...).")
    flags.DEFINE_integer("steps", 3000, "Training steps per run (batch 20: 3000 is one epoch).")
    flags.DEFINE_integer("batch_size", 20, "Images per step.")
    flags.DEFINE_integer(
        "evaluations", 24, "Log-joint evaluations per data point and step (K, or 3K for DisARM)."
    )
    flags.DEFINE_integer("train_size", None, "Use only the first N training images (default all).")
    flags.DEFINE_integer("eval_size", 500, "Test images evaluated.")
    flags.DEFINE_integer("eval_num_samples", 1000, "K of the log p^(x) estimate (>= 64).")
    flags.DEFINE_string("out_dir", "benchmarks/results/sbn_objectives", "Output folder.")
    flags.DEFINE_string(
        "run_dir",
        None,
        "Where the example runs keep their checkpoints (default runs/<out_dir's name>).",
    )
    flags.DEFINE_bool("download", True, "Let TensorFlow Datasets download MNIST if not prepared.")
    flags.DEFINE_bool("redraw", False, "Only redraw the figure and the table from results.json.")


def samples_for(objective: str, evaluations: int) -> int:
    """K of `objective` at `evaluations` log-joint evaluations per data point.

    Raises:
      ValueError: if the evaluations do not split into a whole number of samples.
    """
    per_sample = EVALUATIONS_PER_SAMPLE.get(objective, 1)
    if evaluations % per_sample or evaluations < per_sample:
        raise ValueError(
            f"--evaluations={evaluations} must be a positive multiple of {per_sample}: "
            f"{objective} evaluates log p(x, z) {per_sample} times per sample on the SBN."
        )
    return evaluations // per_sample


def command(name: str, seed: int, config: dict, run_dir: pathlib.Path, download: bool) -> list:
    """The example's command line of one run."""
    args = [
        sys.executable, str(EXAMPLE), "--architecture=sbn", f"--objective={name}",
        f"--num_samples={samples_for(name, config['evaluations'])}",
        f"--max_steps={config['steps']}", f"--batch_size={config['batch_size']}",
        f"--seed={seed}", f"--eval_size={config['eval_size']}",
        f"--eval_num_samples={config['eval_num_samples']}",
        f"--log_every={max(1, config['steps'] // 5)}", f"--out_dir={run_dir}",
        "--download" if download else "--nodownload",
    ]  # fmt: skip
    if config["train_size"] is not None:
        args.append(f"--train_size={config['train_size']}")
    return args


def read_run(run_dir: pathlib.Path, config: dict) -> dict:
    """The test metrics of a finished run from its metrics.json (its last evaluation).

    Raises:
      RuntimeError: if the last evaluation is not of this budget (an earlier run in the
        same run_dir, evaluated otherwise).
    """
    metrics = json.loads((run_dir / "metrics.json").read_text())
    last = metrics["evaluations"][-1]
    wanted = {
        "step": config["steps"],
        "num_test_images": config["eval_size"],
        "log_px_num_samples": config["eval_num_samples"],
    }
    found = {key: last.get(key) for key in wanted}
    if found != wanted:
        raise RuntimeError(
            f"{run_dir}/metrics.json ends with an evaluation of {found}, not {wanted}: "
            "delete that run folder (or use another --run_dir) and rerun."
        )
    return {
        **{metric: last[metric] for metric in METRICS},
        "active_units_per_latent": last["active_units_per_latent"],
        "dataset": metrics["dataset"],
        "objective_description": metrics["objective_description"],
        "steps_per_second": metrics["train"]["steps_per_second"],
    }


def summarize(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{objective: {metric: (mean, standard error, seeds)}} in `OBJECTIVES` order."""
    names = [n for n in OBJECTIVES if any(r["objective"] == n for r in runs)]
    names += sorted({r["objective"] for r in runs} - set(names))
    table = {}
    for name in names:
        rows = [r for r in runs if r["objective"] == name]
        table[name] = {"label": f"{name} (K={rows[0]['num_samples']})"}
        for metric in METRICS + TIMES:
            values = np.array([r[metric] for r in rows], dtype=np.float64)
            se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
            table[name][metric] = (float(values.mean()), float(se), len(values))
    return table


def markdown(table) -> str:
    lines = [
        "| objective | seeds | test IWAE-64 | test log p^(x) | -KL(Q\\|\\|P) | active units "
        "| wall s / run | steps / s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        cells = [f"{row[m][0]:.2f} +- {row[m][1]:.2f}" for m in ("iwae64", "log_px", "neg_kl")]
        cells += [f"{row['active_units'][0]:.1f}", f"{row['wall_seconds'][0]:.0f}"]
        cells += [f"{row['steps_per_second'][0]:.1f}"]
        lines.append(f"| {row['label']} | {row['iwae64'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(results: dict, path: pathlib.Path) -> None:
    """Test IWAE-64, log p^(x) (mean +- standard error, and each seed) and wall time per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, config = results["runs"], results["config"]
    table = summarize(runs)
    names = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (
        ("iwae64", "test IWAE-64"),
        ("log_px", f"test log p^(x), K = {config['eval_num_samples']}"),
        ("wall_seconds", "wall seconds per run"),
    )
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            mean, se, _ = table[name][metric]
            ax.errorbar(i, mean, yerr=0 if np.isnan(se) else se, fmt="o", color="C0", capsize=4)
            values = [r[metric] for r in runs if r["objective"] == name]
            ax.plot([i + 0.15] * len(values), values, ".", color="C1", alpha=0.6)
        labels = [table[n]["label"] for n in names]
        ax.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"SBN 200-200-784: {config['steps']} steps of batch {config['batch_size']}, "
        f"{config['evaluations']} log-joint evaluations per data point (mean +- se over seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    _harness.save_figure(fig, path)
    plt.close(fig)


def check_flags() -> None:
    import mcobjectives as mco

    problems = []
    for name in FLAGS.objectives:
        if name not in mco.objective_names():
            problems.append(
                f"--objectives: {name!r} is not registered; choose from "
                f"{', '.join(mco.objective_names())}."
            )
        else:
            try:
                samples_for(name, FLAGS.evaluations)
            except ValueError as error:
                problems.append(str(error))
    for flag in ("seeds", "steps", "batch_size", "evaluations", "eval_size"):
        if getattr(FLAGS, flag) < 1:
            problems.append(f"--{flag} must be >= 1, got {getattr(FLAGS, flag)}.")
    if FLAGS.eval_num_samples < 64:
        problems.append(f"--eval_num_samples must be >= 64, got {FLAGS.eval_num_samples}.")
    if problems:
        raise app.UsageError(" ".join(problems))


def main(argv):
    del argv
    out_dir = pathlib.Path(FLAGS.out_dir)
    path = out_dir / "results.json"
    if FLAGS.redraw:
        results = _harness.read_json(path)
        draw(results, out_dir / "figure.png")
        print(markdown(summarize(results["runs"])))
        return
    check_flags()
    budget = ("steps", "batch_size", "evaluations", "train_size", "eval_size", "eval_num_samples")
    config = {f: getattr(FLAGS, f) for f in budget}
    config["architecture"] = "sbn"
    saved = _harness.read_json(path) if path.exists() else {"config": config, "runs": []}
    if saved["config"] != config:
        differ = sorted(
            k for k in {*config, *saved["config"]} if config.get(k) != saved["config"].get(k)
        )
        raise app.UsageError(
            f"{path} holds runs of {saved['config']}, which differ in {', '.join(differ)}: "
            "use another --out_dir."
        )
    saved.setdefault("machine", _harness.machine_info())
    runs_root = pathlib.Path(FLAGS.run_dir or ROOT / "runs" / out_dir.resolve().name).resolve()
    failed = []
    for seed in range(FLAGS.seeds):
        for name in FLAGS.objectives:
            if any(r["objective"] == name and r["seed"] == seed for r in saved["runs"]):
                continue
            run_dir = runs_root / f"{name}_seed{seed}"
            args = command(name, seed, config, run_dir, FLAGS.download)
            resumed = (run_dir / "checkpoints").is_dir()
            print(f"{name} seed {seed}: {' '.join(args[1:])}", flush=True)
            start = time.perf_counter()
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                failed.append(f"{name} seed {seed}")
                print(f"  FAILED (exit {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
                continue
            try:
                record = {"objective": name, "seed": seed, **read_run(run_dir, config)}
            except RuntimeError as error:
                failed.append(f"{name} seed {seed}")
                print(f"  FAILED: {error}", flush=True)
                continue
            datasets = {r["dataset"] for r in saved["runs"]} - {record["dataset"]}
            if datasets:
                raise RuntimeError(
                    f"{name} seed {seed} trained on {record['dataset']}, the runs in {path} "
                    f"on {', '.join(sorted(datasets))}: use another --out_dir."
                )
            record.update(
                num_samples=samples_for(name, config["evaluations"]),
                wall_seconds=seconds,
                resumed=resumed,
            )
            saved["runs"].append(record)
            _harness.write_json(path, saved)
            print(json.dumps(_harness.jsonable(record)), flush=True)
    if saved["runs"]:
        draw(saved, out_dir / "figure.png")
        print(markdown(summarize(saved["runs"])))
    if failed:
        print(f"failed runs (rerun the same command to retry): {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
