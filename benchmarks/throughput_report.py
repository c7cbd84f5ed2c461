"""The tables of throughput.py: ms per step, ratios, % of the matmul ceiling, scaling, targets.

    python benchmarks/throughput_report.py benchmarks/results/throughput/results.json

prints the summary of a saved run, as throughput.py prints it at the end of a run.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
from collections.abc import Collection, Sequence

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
from _peers import step_key

HANDWRITTEN, TFP_DREG, JAX_IWAE = "handwritten", "tfp_dreg", "jax_iwae"
HELD = ("held_mb", "held_anon_mb", "held_file_mb")  # memory results; absent in older runs
OURS = ("mcobjectives", "tensorflow", "tfp")  # frameworks timed in throughput.py's process
MODE_NAMES = {"tf": "tf.function", "xla": "XLA", "jit": "jax.jit", "eager": "eager"}
MODE_NAMES["compile"] = "torch.compile"
TARGETS = {  # name -> (limit, what it says)
    "iwae_vs_jax": (1.00, "our IWAE step (best mode) / JAX's (jit), at each batch size"),
    "iwae_percent_of_ceiling": (60.0, "our IWAE step (best mode), % of the matmul ceiling, "
                                "at the largest batch size (min)"),
    "vs_iwae": (1.05, "every other objective / our IWAE, same mode and batch size"),
    "iwae_vs_handwritten": (1.05, "our IWAE / the hand-written TF step, without XLA"),
    "dreg_vs_tfp": (1.00, "our DReG / TFP's DReG step, same mode (an earlier target)"),
}  # fmt: skip
RATIO_DEFINITION = (
    "time ratio: the median ms per step of the configuration over the reference's at the same "
    "K, batch size and (for vs_iwae, vs_handwritten, vs_tfp_dreg) mode; >1 is slower"
)
GFLOP_DEFINITION = (
    "matmul FLOPs, 2 m n k per matmul, of the forward pass, the weight gradients and the "
    "activation gradients autodiff needs (down to z for the decoder, not down to x); 'split' "
    "steps add a backward pass through the decoder for d log w / dz. % of ceiling: GFLOP/s "
    "over those of the TensorFlow float32 [B K, 200] x [200, 784] matmul timed in the same rounds"
)


def _ms(rates: Sequence[float]) -> dict:
    ms = [1000.0 / r for r in rates]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "rounds": ms}


def _complete(item, rounds: int) -> bool:
    return len(item.rates) == rounds and all(math.isfinite(r) and r > 0 for r in item.rates)


def ceilings(items, rounds: int) -> dict:
    """rows -> framework -> GFLOP/s (median, min, max over rounds) of the ceiling's matmul."""
    out: dict = {}
    for t in (t for t in items if t.info["kind"] == "matmul" and _complete(t, rounds)):
        gflops = [r * t.info["gflop"] for r in t.rates]
        out.setdefault(str(t.info["rows"]), {})[t.info["framework"]] = _harness.rate_summary(gflops)
    return out


def step_rows(items, rounds: int, ceiling: dict) -> list[dict]:
    """One row per step configuration timed in every round: ms, GFLOP/s, % of ceiling, ratios."""
    rows = []
    for t in (t for t in items if t.info["kind"] == "step" and _complete(t, rounds)):
        i = t.info
        ms = _ms(t.rates)
        gflop = i["gflop"]
        rows.append({**i, "key": t.key, "steps_per_round": t.units, "milliseconds_per_step": ms})
        rows[-1]["gflop_per_step"] = gflop
        rows[-1]["gflop_per_second"] = gflop / ms["median"] * 1000.0
        tf_ceiling = ceiling.get(str(i["batch_size"] * i["num_samples"]), {}).get("tensorflow")
        rows[-1]["percent_of_ceiling"] = (
            None
            if tf_ceiling is None
            else 100 * rows[-1]["gflop_per_second"] / tf_ceiling["median"]
        )
    by_key = {r["key"]: r for r in rows}
    for r in rows:
        k, b, mode = r["num_samples"], r["batch_size"], r["mode"]
        references = {"vs_jax_iwae": step_key(JAX_IWAE, k, b, "jit")}
        if r["framework"] in OURS:
            references |= {
                f"vs_{name}": step_key(name, k, b, mode) for name in ("iwae", HANDWRITTEN, TFP_DREG)
            }
        for which, key in references.items():
            ref = by_key.get(key)
            ratio = (
                ref
                and r["milliseconds_per_step"]["median"] / ref["milliseconds_per_step"]["median"]
            )
            r[which] = ratio
    return rows


def best_iwae(rows: list[dict], k: int, b: int, name: str = "iwae") -> dict | None:
    """Our IWAE step (or the step `name`) at (K, B) in its faster mode."""
    ours = [r for r in rows if r["name"] == name and (r["num_samples"], r["batch_size"]) == (k, b)]
    return min(ours, key=lambda r: r["milliseconds_per_step"]["median"], default=None)


def targets(rows: list[dict], k: int, batch_sizes, library: Collection[str]) -> dict:
    """Each target's checks {config, value, limit, met}; the missed ones as text."""
    checks = {name: [] for name in TARGETS}

    def check(name, config, value, at_least=False):
        limit = TARGETS[name][0]
        met = None if value is None else (value >= limit if at_least else value <= limit)
        checks[name].append({"config": config, "value": value, "limit": limit, "met": met})

    for b in batch_sizes:
        best = best_iwae(rows, k, b)
        if best is None:
            continue
        check("iwae_vs_jax", best["key"], best["vs_jax_iwae"])
        if b == max(batch_sizes):
            check("iwae_percent_of_ceiling", best["key"], best["percent_of_ceiling"], True)
    for r in rows:
        if r["num_samples"] != k or r["framework"] != "mcobjectives":
            continue
        if r["name"] in library and r["name"] != "iwae":
            check("vs_iwae", r["key"], r["vs_iwae"])
        if r["name"] == "iwae" and r["mode"] == "tf":
            check("iwae_vs_handwritten", r["key"], r["vs_handwritten"])
        if r["name"] == "dreg":
            check("dreg_vs_tfp", r["key"], r["vs_tfp_dreg"])
    missed = [
        f"{c['config']} {name} {c['value']:.3g} (limit {c['limit']})"
        for name, cs in checks.items()
        for c in cs
        if c["met"] is False
    ]
    unevaluated = [
        f"{c['config']} {name}" for name, cs in checks.items() for c in cs if c["met"] is None
    ]
    return {
        "definitions": {name: {"limit": v[0], "what": v[1]} for name, v in TARGETS.items()},
        "checks": checks,
        "missed": missed,
        "not_evaluated": unevaluated,
        "all_met": not missed and not unevaluated,
    }


def log_marginal_rows(items, rounds: int, ceiling: dict) -> list[dict]:
    """`log_marginal_estimate` per call against its matmul floor (its FLOPs at the ceiling)."""
    rows = []
    for t in (t for t in items if t.info["kind"] == "log_marginal" and _complete(t, rounds)):
        i, ms = t.info, _ms(t.rates)
        rows_of_chunk = i["images"] * i["chunk_size"]
        tf_ceiling = ceiling.get(str(rows_of_chunk), {}).get("tensorflow")
        floor = None if tf_ceiling is None else 1000.0 * i["gflop"] / tf_ceiling["median"]
        row = {**i, "key": t.key, "milliseconds_per_call": ms}
        row["seconds_per_1000_images"] = ms["median"] * 1000.0 / i["images"] / 1000.0
        row["gflop_per_second"] = i["gflop"] / ms["median"] * 1000.0
        row["matmul_floor_milliseconds"] = floor
        row["ratio_to_floor"] = None if floor is None else ms["median"] / floor
        row["percent_of_ceiling"] = None if floor is None else 100 * floor / ms["median"]
        rows.append(row)
    return rows


def scaling(rows: list[dict], ks: Sequence[int], batch_sizes: Sequence[int]) -> list[dict]:
    """Our IWAE and the hand-written TF step (each in its faster mode) and the peers' IWAE
    steps at each K and batch size."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for b in batch_sizes:
        for k in ks:
            found = {
                "ours_best": best_iwae(rows, k, b),
                "handwritten_best": best_iwae(rows, k, b, HANDWRITTEN),
            }
            for name, mode in (
                ("jax_iwae", "jit"),
                ("torch_iwae", "eager"),
                ("torch_iwae", "compile"),
            ):
                found[f"{name}/{mode}"] = by_key.get(step_key(name, k, b, mode))
            for impl, r in found.items():
                if r is not None:
                    out.append({
                        "implementation": impl, "batch_size": b, "num_samples": k, "key": r["key"],
                        "milliseconds_per_step": r["milliseconds_per_step"]["median"],
                        "percent_of_ceiling": r["percent_of_ceiling"],
                    })  # fmt: skip
    return out


def tables(items, rounds: int, k: int, ks, batch_sizes, library: Collection[str]) -> dict:
    """What results.json holds of the timings."""
    ceiling = ceilings(items, rounds)
    rows = step_rows(items, rounds, ceiling)
    return {
        "steps": rows,
        "matmul_ceiling": ceiling,
        "log_marginal": log_marginal_rows(items, rounds, ceiling),
        "scaling": scaling(rows, ks, batch_sizes),
        "targets": targets(rows, k, batch_sizes, library),
        "ratio_definition": RATIO_DEFINITION,
        "gflop_definition": GFLOP_DEFINITION,
    }


# ----------------------------------------------------------------------------- printing
def _f(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _label(r: dict) -> str:
    return f"{r['name']} {MODE_NAMES.get(r['mode'], r['mode'])}"


def print_steps(rows: list[dict], title: str, memory: dict) -> None:
    print(f"\n-- {title} --")
    print(
        f"{'step':<28}{'ms/step':>9}{'[min-max]':>16}{'GFLOP/s':>8}{'%ceil':>7}"
        f"{'/iwae':>7}{'/hand':>7}{'/jax':>7}{'step MB':>8}"
    )
    for r in rows:
        ms, mem = r["milliseconds_per_step"], memory.get(r["key"], {})
        spread = f"[{ms['min']:.1f}-{ms['max']:.1f}]"
        print(
            f"{_label(r):<28}{ms['median']:>9.1f}{spread:>16}{r['gflop_per_second']:>8.1f}"
            f"{_f(r['percent_of_ceiling'], '.0f'):>7}{_f(r.get('vs_iwae')):>7}"
            f"{_f(r.get('vs_handwritten')):>7}{_f(r.get('vs_jax_iwae')):>7}"
            f"{_f(mem.get('step_mb'), '.0f'):>8}"
        )


def print_summary(results: dict) -> None:
    """Prints the tables of a results.json (written by throughput.py)."""
    if "steps" not in results:
        raise SystemExit(
            "this results.json predates the peers and the scaling: rerun throughput.py"
        )
    machine, config, rows = results["machine"], results["config"], results["steps"]
    k, memory = int(config["num_samples"]), results.get("memory", {})
    batch_sizes = sorted({r["batch_size"] for r in rows})
    print(
        f"\ndata: {results['data']}; {machine['cpu_model']}, {machine['cpus_available']} CPUs, "
        f"load {machine['loadavg'][0]:.1f} at the start, {machine['loadavg_end'][0]:.1f} at the end"
    )
    print(
        f"ms/step: median over {config['rounds']} interleaved rounds [min-max]; {RATIO_DEFINITION}."
    )
    print("%ceil: % of the TensorFlow matmul ceiling at [B K, 200] x [200, 784]; step MB: memory.")
    for note in results.get("peer_notes", []):
        print(f"NOTE: {note}")
    for b in batch_sizes:
        peers = [r for r in rows if r["num_samples"] == k and r["batch_size"] == b]
        peers = [r for r in peers if r["framework"] not in OURS or r["name"] in
                 ("iwae", "dreg", HANDWRITTEN, TFP_DREG)]  # fmt: skip
        print_steps(peers, f"against the peers: K = {k}, batch {b}", memory)
    for b in batch_sizes:
        for mode in ("tf", "xla"):
            ours = [r for r in rows if r["framework"] in OURS and r["num_samples"] == k]
            ours = [r for r in ours if r["batch_size"] == b and r["mode"] == mode]
            if ours:
                print_steps(
                    ours, f"every objective: K = {k}, batch {b}, {MODE_NAMES[mode]}", memory
                )
    print_scaling(results["scaling"])
    print("\nmatmul ceiling [rows, 200] x [200, 784], GFLOP/s median per framework:")
    for rows_, by_framework in sorted(results["matmul_ceiling"].items(), key=lambda kv: int(kv[0])):
        cells = "".join(f"{fw} {g['median']:7.1f}   " for fw, g in sorted(by_framework.items()))
        print(f"  {rows_:>7} rows   {cells}")
    for e in results["log_marginal"]:
        print(
            f"\nlog_marginal_estimate ({MODE_NAMES['xla' if e['jit_compile'] else 'tf']}), "
            f"{e['images']} images x K = {e['num_samples']} in chunks of {e['chunk_size']}: "
            f"{e['milliseconds_per_call']['median']:.0f} ms per call "
            f"({e['seconds_per_1000_images']:.1f} s per 1000 images), matmul floor "
            f"{_f(e['matmul_floor_milliseconds'], '.0f')} ms: "
            f"{_f(e['ratio_to_floor'])}x the floor, {_f(e['percent_of_ceiling'], '.0f')} % of the "
            f"ceiling; mean log p^(x) {e['mean_log_px']:.1f}, finite {e['all_finite']}"
        )
    if memory:
        print(
            "\npeak memory, MB over the resident size: first call (trace, compile, step), step;"
            "\nheld after them with the heap trimmed: all, anonymous, libraries' code"
        )
        for key, v in memory.items():
            detail = f"error: {v['error']}" if "error" in v else (
                f"{v['first_call_mb']:>8.0f}{v['step_mb']:>8.0f}   "
                + "".join(f"{_f(v.get(h), '.0f'):>6}" for h in HELD)
                + f"   (peak RSS {v['peak_rss_mb']:.0f})"
            )  # fmt: skip
            print(f"  {key:<36}{detail}")
    for name, peer in results.get("peers", {}).items():
        if peer.get("peak_rss_mb") is not None:
            print(f"  {name} process, every configuration: peak RSS {peer['peak_rss_mb']:.0f} MB")
    print_checks(results)
    if results.get("retraced_during_timing"):
        print(f"\nWARNING: retraced during timing: {results['retraced_during_timing']}")
    t = results["targets"]
    print("\ntargets:")
    for name, (limit, what) in TARGETS.items():
        checks = t["checks"].get(name, [])
        values = [c["value"] for c in checks if c["value"] is not None]
        state = "not evaluated" if not values else (
            "met" if all(c["met"] for c in checks) else "MISSED"
        )  # fmt: skip
        span = f"{min(values):.2f}..{max(values):.2f}" if values else "-"
        print(f"  {name:<25}limit {limit:<6}{span:>13}  {state:<14}{what}")
    print(f"  missed: {'; '.join(t['missed']) or 'none'}")
    if t["not_evaluated"]:
        print(f"  not evaluated: {'; '.join(t['not_evaluated'])}")


def _cell(c: dict | None) -> str:
    if c is None:
        return "-"
    return f"{c['milliseconds_per_step']:.1f} ({_f(c['percent_of_ceiling'], '.0f')}%)"


def print_scaling(cells: list[dict]) -> None:
    if not cells:
        return
    ks = sorted({c["num_samples"] for c in cells})
    print(f"\nscaling of the IWAE step: ms per step (% of ceiling); last column: K = {ks[-1]} over "
          f"K = {ks[-2] if len(ks) > 1 else ks[-1]}")  # fmt: skip
    print(
        f"{'implementation':<22}{'B':>4}" + "".join(f"{'K=' + str(k):>15}" for k in ks) + "   ratio"
    )
    by = {(c["implementation"], c["batch_size"], c["num_samples"]): c for c in cells}
    for impl in dict.fromkeys(c["implementation"] for c in cells):
        for b in sorted({c["batch_size"] for c in cells}):
            line = [by.get((impl, b, k)) for k in ks]
            text = "".join(_cell(c).rjust(15) for c in line)
            ratio = None
            if len(line) > 1 and line[-1] and line[-2]:
                ratio = line[-1]["milliseconds_per_step"] / line[-2]["milliseconds_per_step"]
            mode = (
                ""
                if not impl.endswith("_best") or not line[-1]
                else "/" + line[-1]["key"].split("/")[-1]
            )
            print(f"{impl + mode:<22}{b:>4}{text}{_f(ratio):>8}")


def print_checks(results: dict) -> None:
    print(f"\nhand-written vs library IWAE on the same noise: {results['handwritten_check']}")
    if "tfp_check" in results:
        c = results["tfp_check"]
        print(f"TFP DReG vs mco.DReG, {c['num_seeds']} seeds each (agree: {c['agree']}):")
        print(f"  ({c['note']})")
        for part in ("loss", "encoder_gradient", "decoder_gradient"):
            a = {key: math.nan if v is None else v for key, v in c[part].items()}
            print(
                f"  {part:<17} mean z^2 {a['mean_t_squared']:8.2f}, max |z| {a['max_abs_t']:7.2f} "
                f"(~{a['expected_max_abs_t']:.2f} if equal), |z| > 3: "
                f"{100 * a['fraction_abs_t_above_3']:.2f} %, relative difference of the means "
                f"{a['relative_difference_of_means']:.3g}"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=pathlib.Path, help="a results.json of throughput.py")
    print_summary(_harness.read_json(parser.parse_args(argv).results))


if __name__ == "__main__":
    main()
