"""The tables of throughput.py: steps/s with ratios and targets, from timings or results.json.

    python benchmarks/throughput_report.py benchmarks/results/throughput/results.json

prints the summary of a saved run, as throughput.py prints it at the end of a run.
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Collection

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
import throughput_steps as parts
from _harness import Timed

HANDWRITTEN, TFP_DREG = "handwritten", "tfp_dreg"
# Targets: time ratios (seconds per step over the reference's) not to be exceeded.
TARGETS = {"handwritten": 1.10, "iwae": 1.15, "tfp": 1.00}
VS_IWAE_TARGETED = ("dreg", "dreg_rws", "jvi", "jvi_dreg")
# The keys of `diagnostics.t_statistic_summary`, and those results.json had before them.
T_KEYS = {
    "mean_t_squared": "mean_z_squared",
    "max_abs_t": "max_abs_z",
    "expected_max_abs_t": "expected_max_abs_z",
    "fraction_abs_t_above_3": "fraction_abs_z_above_3",
}


def config_key(name: str, batch_size: int, jit: bool) -> str:
    return f"{name}/b{batch_size}/{'xla' if jit else 'tf'}"


def _t(summary: dict, key: str) -> float:
    return summary[key] if key in summary else summary[T_KEYS[key]]


def throughput_rows(
    timed: list[Timed], runners: dict, k: int, library: Collection[str]
) -> tuple[list[dict], list[str]]:
    """Per step configuration: steps/s, GFLOP/s, the ratios and targets; the missed targets.

    `runners`: name -> an object with `gradient_kind` and `objective` (repr or None);
    `library`: the names of the library's objectives (the targets against hand-written).
    """
    rows = []
    for t in (t for t in timed if t.info["kind"] == "step"):
        name, batch_size = t.info["name"], t.info["batch_size"]
        rates = _harness.rate_summary(t.rates)
        gflop = parts.step_gflop(runners[name].gradient_kind, batch_size, k)
        rows.append(
            {
                "key": t.key,
                "name": name,
                "objective": runners[name].objective,
                "batch_size": batch_size,
                "jit_compile": t.info["jit_compile"],
                "steps_per_second": rates,
                "milliseconds_per_step": 1000.0 / rates["median"],
                "gradient_kind": runners[name].gradient_kind,
                "gflop_per_step": gflop,
                "gflop_per_second": gflop * rates["median"],
            }
        )
    by_key = {r["key"]: r for r in rows}
    references = {"handwritten": HANDWRITTEN, "iwae": "iwae", "tfp": TFP_DREG}
    misses = []
    for r in rows:
        applies = {
            "handwritten": r["name"] in library,
            "iwae": r["name"] in VS_IWAE_TARGETED,
            "tfp": r["name"] == "dreg",
        }
        r["targets_met"] = {}
        for which, reference in references.items():
            ref = by_key.get(config_key(reference, r["batch_size"], r["jit_compile"]))
            ratio = None
            if ref is not None:
                ratio = ref["steps_per_second"]["median"] / r["steps_per_second"]["median"]
            r[f"vs_{which}"] = ratio
            if applies[which] and ratio is not None:
                r[f"target_vs_{which}"] = TARGETS[which]
                r["targets_met"][f"vs_{which}"] = ratio <= TARGETS[which]
                if ratio > TARGETS[which]:
                    misses.append(f"{r['key']} vs {which} {ratio:.2f} > {TARGETS[which]}")
    return rows, misses


def noise_rows(timed: list[Timed], rows: list[dict]) -> dict:
    by_key = {r["key"]: r for r in rows}
    noise = {}
    for t in (t for t in timed if t.info["kind"] == "noise"):
        ms = 1000.0 / _harness.rate_summary(t.rates)["median"]
        iwae = by_key.get(config_key("iwae", t.info["batch_size"], t.info["jit_compile"]))
        noise[t.key] = {
            **t.info,
            "milliseconds_per_call": ms,
            "milliseconds_per_call_rounds": [1000.0 / r for r in t.rates],
            "fraction_of_library_iwae_step": (
                None if iwae is None else ms / iwae["milliseconds_per_step"]
            ),
        }
    return noise


def tables(timed: list[Timed], runners: dict, k: int, library: Collection[str]) -> dict:
    """What results.json holds of the timings: rows, targets, matmul ceiling, noise."""
    rows, missed = throughput_rows(timed, runners, k, library)
    ceiling = {
        t.key: {
            "shape": t.info["shape"],
            "gflop_per_second": _harness.rate_summary([r * t.info["gflop"] for r in t.rates]),
        }
        for t in timed
        if t.info["kind"] == "matmul"
    }
    return {
        "throughput": rows,
        "targets": {
            **{f"vs_{which}": target for which, target in TARGETS.items()},
            "vs_iwae_applies_to": VS_IWAE_TARGETED,
            "missed": missed,
            "all_met": not missed,
        },
        "ratio_definition": "seconds per step of the configuration over those of the reference "
        "at the same batch size and jit mode (from the median steps/s)",
        "gflop_definition": "analytic matmul FLOPs (2 m n k per matmul) of the forward pass, the "
        "weight gradients and the activation gradients autodiff needs; 'split' objectives add "
        "a backward pass through the decoder for d log w / dz",
        "matmul_ceiling": ceiling,
        "noise": noise_rows(timed, rows),
    }


def _ratio(r: dict, which: str) -> str:
    value, target = r.get(f"vs_{which}"), r.get(f"target_vs_{which}")
    if value is None:
        return "-"
    return f"{value:.2f}" + ("" if target is None else (" ok" if value <= target else " MISS"))


def print_summary(results: dict) -> None:
    """Prints the tables of a results.json (written by throughput.py)."""
    machine, ceiling = results["machine"], results["matmul_ceiling"]
    by_key = {r["key"]: r for r in results["throughput"]}
    names = list(dict.fromkeys(r["name"] for r in results["throughput"]))
    batch_sizes = sorted({r["batch_size"] for r in results["throughput"]})
    jit_modes = sorted({r["jit_compile"] for r in results["throughput"]})
    print(
        f"\ndata: {results['data']}; K = {results['config']['num_samples']}; "
        f"{machine['cpu_model']}, {machine['cpus_available']} CPUs (shared machine: timings "
        "are noisy)"
    )
    peak = max(c["gflop_per_second"]["median"] for c in ceiling.values())
    print(
        "\nTraining steps/s: median over rounds [min-max]. Ratios are time ratios to the "
        "reference (>1: slower);\n'ok'/'MISS' mark the targets: objectives vs hand-written "
        f"<= {TARGETS['handwritten']}, DReG/JVI vs our IWAE <= {TARGETS['iwae']}, our DReG vs "
        f"TFP DReG <= {TARGETS['tfp']}.\n%peak: GFLOP/s over the best matmul GFLOP/s ({peak:.1f})."
    )
    header = (
        f"{'config':<26}{'steps/s':>8}{'[min-max]':>14}{'ms/step':>9}{'GFLOP/s':>9}"
        f"{'%peak':>7}{'vs hand':>11}{'vs iwae':>11}{'vs tfp':>11}"
    )
    for batch_size in batch_sizes:
        for jit in jit_modes:
            print(f"\n-- batch {batch_size}, {'jit_compile=True' if jit else 'tf.function'} --")
            print(header)
            for name in names:
                r = by_key[config_key(name, batch_size, jit)]
                s, g = r["steps_per_second"], r["gflop_per_second"]
                ratios = "".join(f"{_ratio(r, w):>11}" for w in TARGETS)
                spread = f"[{s['min']:.1f}-{s['max']:.1f}]"
                print(
                    f"{name:<26}{s['median']:>8.2f}{spread:>14}{r['milliseconds_per_step']:>9.1f}"
                    f"{g:>9.1f}{100 * g / peak:>7.1f}{ratios}"
                )
    print("\nmatmul ceiling, GFLOP/s median [min-max]:")
    for key, c in ceiling.items():
        g = c["gflop_per_second"]
        print(f"  {key:<28}{c['shape']!s:<20}{g['median']:.1f} [{g['min']:.1f}-{g['max']:.1f}]")
    if results["noise"]:
        print("\nnoise of one step, [K, B, 50]: ms per call (median), share of library IWAE step")
        for key, v in results["noise"].items():
            share = v["fraction_of_library_iwae_step"]
            share = "" if share is None else f"{100 * share:7.1f} %"
            print(f"  {key:<52}{v['milliseconds_per_call']:>9.3f}{share}")
        print("  max |difference| of the draws:")
        for key, value in results["noise_agreement"].items():
            print(f"    {key:<48}{value:.3g}")
    print(f"\nhand-written vs library IWAE on the same noise: {results['handwritten_check']}")
    if "tfp_check" in results:
        c = results["tfp_check"]
        print(f"TFP DReG vs mco.DReG, {c['num_seeds']} seeds each (agree: {c['agree']}):")
        print(f"  ({c['note']})")
        for part in ("loss", "encoder_gradient", "decoder_gradient"):
            a = {k: math.nan if v is None else v for k, v in c[part].items()}
            mean_z2, max_z, expected, above = (_t(a, key) for key in T_KEYS)
            print(
                f"  {part:<17} mean z^2 {mean_z2:8.2f}, max |z| {max_z:7.2f} (~{expected:.2f} if "
                f"equal), |z| > 3: {100 * above:.2f} %, relative difference of the means "
                f"{a['relative_difference_of_means']:.3g}"
            )
    if "log_marginal" in results:
        e = results["log_marginal"]
        print(
            f"\nlog p^(x), K = {e['num_samples']}: {e['seconds']:.1f} s for {e['images']} images "
            f"({e['images_per_second']:.2f} images/s, {e['seconds_per_1000_images']:.1f} s per "
            f"1000, {e['gflop_per_second']:.1f} GFLOP/s)"
        )
    if "memory" in results:
        print("\npeak memory, MB over the resident size: first call (trace+compile+step), step")
        for key, v in results["memory"].items():
            if "error" in v:
                print(f"  {key:<34} error: {v['error']}")
            else:
                mb = f"{v['first_call_mb']:>8.0f}{v['step_mb']:>8.0f}"
                print(f"  {key:<34}{mb}   (peak RSS {v['peak_rss_mb']:.0f})")
    if results["retraced_during_timing"]:
        print(f"\nWARNING: retraced during timing: {results['retraced_during_timing']}")
    missed = results["targets"]["missed"]
    print(f"\ntargets: {'all met' if not missed else 'missed: ' + '; '.join(missed)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=pathlib.Path, help="a results.json of throughput.py")
    print_summary(_harness.read_json(parser.parse_args(argv).results))


if __name__ == "__main__":
    main()
