"""`pgraft results`: docs/results.md and the README's results table, written from docs/results/*.json.

Every number on those pages comes from a result file that an experiment wrote (`pgraft compare`,
`demo`, `sweep`, `bases`, `inc`), so a number has one source: rerun the experiment, then this.
``--check`` exits 1 if the committed pages differ from what the files give (tests do the same).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import registry

SUMMARY_BEGIN = "<!-- results:summary (written by `pgraft results` from docs/results/*.json; do not edit) -->"
SUMMARY_END = "<!-- /results:summary -->"
TASKS = tuple(registry.BUILTIN)  # the tasks docs/results/ holds results of
METHODS = {"base": "base", "ddpo": "DDPO", "grpo": "GRPO", "graft": "GRAFT"}


def num(x) -> str:
    """A result's number: 3 decimals below 10 in magnitude, 2 above; a dash for a missing one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def seconds(x) -> str:
    return "—" if not x else f"{x:,.0f}"


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def ci(summary: dict) -> str:
    lo, hi = summary["reward_ci95"]
    return f"{num(summary['reward_mean'])} [{num(lo)}, {num(hi)}]"


def label(key: str) -> str:
    """compare's method keys: pgraft_6 -> "P-GRAFT, N_I = 6"; demo keys: graft_dedup -> "GRAFT, dedup"."""
    if key.startswith("pgraft_") and key[7:].isdigit():
        return f"P-GRAFT, N_I = {key[7:]}"
    head, _, rest = key.partition("_")
    name = METHODS.get(head, "P-GRAFT" if head == "pgraft" else head)
    return f"{name}, {rest.replace('_', ' ')}" if rest else name


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# -- at a glance -----------------------------------------------------------------------------------
def summary(folder: Path) -> list[str]:
    """One row per task: each method's final held-out reward at equal samples (`pgraft compare`,
    seeds pooled; "at N" where a method was given a larger budget), or the single-seed demo where
    a task has no comparison."""
    rows = []
    for task in TASKS:
        compare = load(folder, f"compare_{task}")
        if compare is not None:
            methods, at = compare["methods"], compare["equal_samples"]["at"]

            def final(key: str) -> str:
                """A method's final reward, with its own budget where it ran past the shared one."""
                f = methods[key]["final"]
                return ci(f) if key == "base" or f["samples"] == at else f"{ci(f)} at {f['samples']:,}"

            pgraft = [k for k in methods if k.startswith("pgraft")]
            best = max(pgraft, key=lambda k: methods[k]["final"]["reward_mean"]) if pgraft else None
            cells = [final(k) if k in methods else "—" for k in ("base", "ddpo", "grpo", "graft")]
            cells.append(f"{final(best)} ({label(best).split(', ')[1]})" if best else "—")
            seeds = len(compare["seeds"])
            rows.append([task, *cells, f"{at:,}", f"compare, {seeds} seeds"])
            continue
        demo = load(folder, f"demo_{task}")
        if demo is None:
            continue
        models = demo["models"]
        pick = lambda prefix: next((k for k in models if k.startswith(prefix)), None)  # noqa: E731
        cells = [ci(models[k]) if k else "—" for k in (pick("base"), pick("ddpo"), pick("grpo"), pick("graft"))]
        pg = pick("pgraft")
        cells.append(f"{ci(models[pg])} (N_I = {models[pg]['n_i']})" if pg else "—")
        samples = max(m.get("samples_drawn", 0) for m in models.values())
        rows.append([task, *cells, f"{samples:,}", "demo, 1 seed"])
    header = ["task", "base", "DDPO", "GRPO", "GRAFT", "P-GRAFT (best N_I)", "samples", "source"]
    return table(header, rows)


# -- the sections of docs/results.md -----------------------------------------------------------------
def compare_section(task: str, compare: dict) -> list[str]:
    by_seed = "differences" in compare  # comparisons that carry intervals over seeds
    rows = []
    for key, m in compare["methods"].items():
        final = m["final"]
        seeds = ", ".join(num(s["final"]["reward_mean"]) for s in m.get("per_seed", []))
        row = [label(key), ci(final), num(final.get("reward_seed_std")), seeds or "—"]
        row += [interval(final.get("reward_seed_ci95"))] if by_seed else []
        rows.append([*row, num(final.get("samples")), num(final.get("passes")), seconds(final.get("wall_s"))])
    header = ["method", "held-out reward [95% CI], seeds pooled", "seed std", "per seed"]
    header += ["95% CI over seeds"] if by_seed else []
    eq = compare["equal_samples"]
    lines = [
        f"### {task}",
        "",
        *table([*header, "samples", "passes", "wall s"], rows),
        "",
        f"Seeds {', '.join(map(str, compare['seeds']))}; at {eq['at']:,} samples the highest curve is "
        f"{label(eq['winner'])}. Source: `docs/results/compare_{task}.json`.",
        "",
    ]
    if by_seed:
        lines += differences_table(compare)
    return lines


def interval(ci95) -> str:
    return "—" if ci95 is None else f"[{num(ci95[0])}, {num(ci95[1])}]"


def differences_table(compare: dict) -> list[str]:
    """Each pair's final-reward difference over seeds, and the samples each method took to reach the
    threshold (the base plus 90% of the way to the best final reward)."""
    rows = []
    for pair, d in compare["differences"].items():
        a, b = pair.split(" - ")
        rows.append(
            [f"{label(a)} − {label(b)}", num(d["mean"]), interval(d["seed_ci95"]), "yes" if d["decided"] else "no"]
        )
    reach = compare["samples_to_threshold"]
    hits = [[label(k), ", ".join("—" if h is None else f"{h:,}" for h in r["per_seed"]), f"{r['within']:,}"]
            for k, r in reach["methods"].items()]  # fmt: skip
    return [
        *table(["difference", "mean", "95% CI over seeds (paired)", "decided"], rows),
        "",
        f"Samples to reach {num(reach['threshold'])} (the base plus {reach['fraction']:.0%} of the way to the best "
        "final reward), per seed (— : not reached within the budget):",
        "",
        *table(["method", "samples per seed", "budget"], hits),
        "",
    ]


DEMO_METRICS = (
    "accuracy", "diversity", "geneval", "well_formed", "validity", "uniqueness", "novelty", "fid", "overlap", "max_iou",
    "area",
)  # fmt: skip


def demo_section(task: str, demo: dict) -> list[str]:
    models = dict(demo["models"])
    real = demo.get("task_info", {}).get("real_held_out")
    if real:
        models = {"real held-out": real, **models}
    metrics = [k for k in DEMO_METRICS if any(finite(m.get(k)) for m in models.values())]
    rows = [[label(k) if k != "real held-out" else k, ci(m), *(num(m.get(x)) for x in metrics),
             num(m.get("samples_drawn")), seconds(m.get("wall_s"))] for k, m in models.items()]  # fmt: skip
    return [
        f"### {task}",
        "",
        *table(["model", "held-out reward [95% CI]", *metrics, "samples", "wall s"], rows),
        "",
        f"One seed. Source: `docs/results/demo_{task}.json`.",
        "",
    ]


def sweep_section(task: str, sweep: dict) -> list[str]:
    rows = [[num(r["n_i_frac"]), str(r["n_i"]), ci(r), num(r.get("reward_seed_std")), num(r.get("share_decided"))]
            for r in sweep["rows"]]  # fmt: skip
    return [
        f"### {task}",
        "",
        *table(
            [
                "N_I / S",
                "N_I",
                "held-out reward [95% CI], seeds pooled",
                "seed std",
                "share of Var[r] decided at x_{N_I}",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"{sweep['sampler_steps']} sampler steps, seeds {', '.join(map(str, sweep['seeds']))}. "
        f"Source: `docs/results/sweep_{task}.json`.",
        "",
    ]


def bases_section(bases: dict) -> list[str]:
    rows = [[r["task"], r["model"], num(r["quality"]), num(r["quality_confident"]), num(r["fid"]), ci(r),
             num(r["accuracy"]), num(r["diversity"])] for r in bases["rows"]]  # fmt: skip
    header = ["task", "images", "quality", "quality ≥ 0.9", "FID (judge features)", "prompted reward [95% CI]",
              "accuracy", "diversity"]  # fmt: skip
    return [*table(header, rows), "", "Source: `docs/results/bases.json`.", ""]


def inc_section(inc: dict) -> list[str]:
    rows = [[r["method"], str(r["base_steps"]), str(r["corrector_steps"]), num(r["fid"]), num(r.get("fid_std")),
             f"{r['flops_per_image']:.3g}"] for r in inc["rows"]]  # fmt: skip
    return [
        *table(["sampler", "base steps", "corrector steps", "FID", "FID std over seeds", "FLOPs per image"], rows),
        "",
        f"{inc['metric']}. Source: `docs/results/inc_{inc['task']}.json`.",
        "",
    ]


def page(folder: Path) -> str:
    lines = [
        "# Results",
        "",
        "Written by `pgraft results` from the result files in [results/](results/), which the experiments",
        "wrote; do not edit by hand. All runs are at CPU scale (2 cores), on the embedded tasks. The",
        "intervals are normal 95% intervals over the pooled held-out samples of all seeds; the seed",
        "standard deviation beside them shows how far single seeds move.",
        "",
        "## At a glance",
        "",
        *summary(folder),
        "",
    ]
    sections = [
        ("Comparisons at equal samples (`pgraft compare`)", "compare", compare_section),
        ("Demos (`pgraft demo`)", "demo", demo_section),
        ("The N_I sweep (`pgraft sweep`)", "sweep", sweep_section),
    ]
    for title, prefix, render in sections:
        found = [(t, load(folder, f"{prefix}_{t}")) for t in TASKS]
        found = [(t, r) for t, r in found if r is not None]
        if found:
            lines += [f"## {title}", ""]
            for task, result in found:
                lines += render(task, result)
    bases = load(folder, "bases")
    if bases is not None:
        lines += ["## Base models (`pgraft bases`)", "", *bases_section(bases)]
    inc = load(folder, "inc_digits")
    if inc is not None:
        lines += ["## Inverse noise correction (`pgraft inc`)", "", *inc_section(inc)]
    return "\n".join(lines).rstrip() + "\n"


def with_summary(readme: str, folder: Path) -> str:
    """The README with its results table between the markers replaced by the current one."""
    if SUMMARY_BEGIN not in readme or SUMMARY_END not in readme:
        raise ValueError("README.md has no results markers")
    head, rest = readme.split(SUMMARY_BEGIN, 1)
    _, tail = rest.split(SUMMARY_END, 1)
    return head + SUMMARY_BEGIN + "\n" + "\n".join(summary(folder)) + "\n" + SUMMARY_END + tail


def pages(root: Path) -> dict[Path, str]:
    """What docs/results.md and README.md should hold, from ``root``/docs/results/*.json."""
    folder = root / "docs" / "results"
    readme = root / "README.md"
    return {root / "docs" / "results.md": page(folder), readme: with_summary(readme.read_text(), folder)}


def run_results(root: Path, check: bool) -> int:
    stale = []
    for path, text in pages(root).items():
        if path.is_file() and path.read_text() == text:
            continue
        if check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} differs from what docs/results/*.json give: run `pgraft results`")
    return 1 if stale else 0
