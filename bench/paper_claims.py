"""Reproduce the accuracy claims of Ezoe & Sato 2024 and CompreSSM (Chahine et al. 2025) with edgessm.

Arms, per seed s and reduced size r (N = --d-state modes in the full model):

  full       train N modes from Skew-HiPPO                              (one per seed)
  small      train r modes from Skew-HiPPO, same epochs                 (the "train small" baseline)
  bt         balanced truncation of `full` to r, no training            (compress --rank r; eval)
  bt_ft      bt + main training, same epochs as `small`                 (Ezoe & Sato 2024)
  inred      in-training reduction to r during the first 20%            (CompreSSM style, same total epochs)
  modal      modal truncation of `full` to r, no training
  modal_ft   modal + the same main training                             (any warm start vs balancing)
  hbt        horizon-aware BT (--horizon = task length) of `full`, no training
  hbt_ft     hbt + the same main training
  small_2x   (control, --control-ranks) r modes from scratch with 2x epochs: the compute of full + bt_ft
  full_2x    (control, with --control-ranks) the full model with 2x epochs: what the same compute buys at N

Every step is a call of the `edgessm` CLI (so the numbers are what a user gets), one thread per run,
--jobs runs in parallel. Resumable: each finished step leaves <workdir>/<name>.json; a rerun skips it.
The seed is the training seed and the task generator seed (edgessm uses one --seed for both), so each
seed is a fresh mnist1d draw and a fresh initialisation; evaluation uses the same seed's test split.

    python bench/paper_claims.py --seeds 0,1,2 --epochs 10 --ranks 16,8,4 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = ["small", "bt", "bt_ft", "inred", "modal", "modal_ft", "hbt", "hbt_ft", "small_2x"]
ARM_LABEL = {
    "full": "(1) full N, trained",
    "small": "(2) r modes, trained from scratch",
    "bt": "(3) BT of (1), no training",
    "bt_ft": "(4) BT + main training (Ezoe & Sato)",
    "inred": "(5) in-training reduction (CompreSSM)",
    "modal": "(6a) modal trunc. of (1), no training",
    "modal_ft": "(6b) modal + main training",
    "hbt": "(7a) horizon BT of (1), no training",
    "hbt_ft": "(7b) horizon BT + main training",
    "small_2x": "(control) r modes from scratch, 2x epochs",
    "full_2x": "(control) full N, 2x epochs",
}
FULL_ARMS = ["full", "full_2x"]  # one row per seed, r = N


class Job:
    def __init__(self, name: str, cmds: list[list[str]], deps: list[str], kind: str):
        self.name, self.cmds, self.deps, self.kind = name, cmds, deps, kind
        self.proc: subprocess.Popen | None = None
        self.step = 0
        self.t0 = 0.0


def _first_json(text: str) -> dict:
    i = text.find("\n{")
    i = 0 if text.startswith("{") else i + 1
    return json.loads(text[i:])


def build_jobs(a, wd: Path) -> list[Job]:
    task = ["--task", a.task] + sum((["--task-option", o] for o in a.task_option), [])
    common = ["--epochs", str(a.epochs), "--threads", "1", "--quiet", "--json"]
    model = ["--init", "skew-hippo", "--d-model", str(a.d_model), "--n-layers", str(a.n_layers)]
    jobs: list[Job] = []
    for s in a.seeds:
        full = wd / f"full_s{s}.safetensors"
        jobs.append(Job(f"full_s{s}", [["edgessm", "train", *task, "-o", str(full), *model, "--d-state", str(a.d_state),
                                         "--seed", str(s), *common]], [], "train"))
    for r in a.ranks:
        for s in a.seeds:
            full = wd / f"full_s{s}.safetensors"
            p = lambda arm: wd / f"{arm}_r{r}_s{s}.safetensors"  # noqa: E731
            jobs.append(Job(f"small_r{r}_s{s}", [["edgessm", "train", *task, "-o", str(p("small")), *model,
                                                  "--d-state", str(r), "--seed", str(s), *common]], [], "train"))
            jobs.append(Job(f"inred_r{r}_s{s}", [["edgessm", "train", *task, "-o", str(p("inred")), *model,
                                                  "--d-state", str(a.d_state), "--reduce-rank", str(r),
                                                  "--reduce-until", str(a.reduce_until), "--seed", str(s), *common]],
                            [], "train"))
            for arm, extra in (("bt", []), ("modal", ["--method", "modal"]), ("hbt", ["--horizon", str(a.horizon)])):
                jobs.append(Job(f"{arm}_r{r}_s{s}", [
                    ["edgessm", "compress", str(full), "-o", str(p(arm)), "--rank", str(r), *extra, "--json"],
                    ["edgessm", "eval", str(p(arm)), *task, "--seed", str(s), "--json"]], [f"full_s{s}"], "compress"))
                jobs.append(Job(f"{arm}_ft_r{r}_s{s}", [["edgessm", "finetune", str(p(arm)), *task, "-o",
                                                         str(p(arm + "_ft")), "--seed", str(s), *common]],
                                [f"{arm}_r{r}_s{s}"], "train"))
    long = [c if c != str(a.epochs) else str(2 * a.epochs) for c in common]
    for s in a.seeds if a.control_ranks else []:
        jobs.append(Job(f"full_2x_s{s}", [["edgessm", "train", *task, "-o", str(wd / f"full_2x_s{s}.safetensors"), *model,
                                           "--d-state", str(a.d_state), "--seed", str(s), *long]], [], "train"))
    for r in a.control_ranks:
        for s in a.seeds:
            jobs.append(Job(f"small_2x_r{r}_s{s}", [["edgessm", "train", *task, "-o", str(wd / f"small_2x_r{r}_s{s}.safetensors"),
                                                     *model, "--d-state", str(r), "--seed", str(s), *long]], [], "train"))
    return jobs


def run(a) -> dict:
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(a, wd)
    # finished runs of every arm, so that a filtered run sees its cached inputs (e.g. full_s0) as done
    done = {j.name for j in jobs if (wd / f"{j.name}.json").exists()}
    if a.arms:  # run only these arms (their inputs must exist or be among them)
        keep = set(a.arms.split(","))
        jobs = [j for j in jobs if (j.name.rsplit("_r", 1)[0] if "_r" in j.name else j.name.rsplit("_s", 1)[0]) in keep]
    pending = [j for j in jobs if j.name not in done]
    done_here = sum(j.name in done for j in jobs)
    failed: set[str] = set()
    running: list[Job] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{done_here} cached, {len(pending)} to run", flush=True)
    outs: dict[str, list[str]] = {}

    def start(j: Job):
        # stdout/stderr to files, not pipes: a report larger than the pipe buffer (compress --json with many
        # warnings) would block the child until we read, and we only read after it exits
        j.log = (wd / f"{j.name}.step{j.step}.out", wd / f"{j.name}.step{j.step}.err")
        with open(j.log[0], "w") as fo, open(j.log[1], "w") as fe:
            j.proc = subprocess.Popen(j.cmds[j.step], stdout=fo, stderr=fe, text=True, env=env)

    while pending or running:
        for j in list(running):
            if j.proc.poll() is None:
                continue
            out, err = j.log[0].read_text(), j.log[1].read_text()
            if j.proc.returncode != 0:
                print(f"FAILED {j.name}: {' '.join(j.cmds[j.step])}\n{err[-2000:]}", flush=True)
                failed.add(j.name)
                running.remove(j)
                continue
            outs.setdefault(j.name, []).append(out)
            j.step += 1
            if j.step < len(j.cmds):
                start(j)
                continue
            running.remove(j)
            res = {"name": j.name, "kind": j.kind, "wall_s": time.time() - j.t0,
                   "commands": [" ".join(c) for c in j.cmds], "outputs": [_first_json(o) for o in outs[j.name]]}
            (wd / f"{j.name}.json").write_text(json.dumps(res, indent=1))
            done.add(j.name)
            print(f"done {j.name} in {res['wall_s']:.0f} s: {summary_metric(res):.4f}", flush=True)
        for j in list(pending):
            if len(running) >= a.jobs:
                break
            if any(d in failed for d in j.deps):
                failed.add(j.name)
                pending.remove(j)
                continue
            if all(d in done for d in j.deps):
                pending.remove(j)
                j.t0 = time.time()
                start(j)
                running.append(j)
        time.sleep(0.5)
    return collect(a, wd)


def summary_metric(res: dict) -> float:
    o = res["outputs"][-1]
    return float(o["test"] if "test" in o else o["accuracy"])


def collect(a, wd: Path) -> dict:
    def get(name):
        f = wd / f"{name}.json"
        return json.loads(f.read_text()) if f.exists() else None

    rows = []
    for arm in FULL_ARMS + ARMS:
        for r in ([a.d_state] if arm in FULL_ARMS else a.ranks):
            accs, secs, per_seed = [], [], {}
            for s in a.seeds:
                res = get(f"{arm}_s{s}" if arm in FULL_ARMS else f"{arm}_r{r}_s{s}")
                if res is None:
                    continue
                acc = summary_metric(res)
                accs.append(acc)
                per_seed[s] = acc
                o = res["outputs"][-1] if res["kind"] == "train" else res["outputs"][0]
                secs.append(o.get("seconds", res["wall_s"]))
            rows.append({"arm": arm, "label": ARM_LABEL[arm], "r": r, "n": len(accs), "per_seed": per_seed,
                         "mean": statistics.mean(accs) if accs else None,
                         "std": statistics.stdev(accs) if len(accs) > 1 else None,
                         "min": min(accs) if accs else None, "max": max(accs) if accs else None,
                         "mean_seconds": statistics.mean(secs) if secs else None,
                         "command_example": (get(f"{arm}_s{a.seeds[0]}" if arm in FULL_ARMS else f"{arm}_r{r}_s{a.seeds[0]}")
                                             or {}).get("commands")})
    return {"task": a.task, "task_options": a.task_option, "seeds": a.seeds, "epochs": a.epochs, "ranks": a.ranks,
            "d_state": a.d_state, "d_model": a.d_model, "n_layers": a.n_layers, "init": "skew-hippo",
            "reduce_until": a.reduce_until, "control_ranks": a.control_ranks, "horizon": a.horizon, "threads_per_run": 1, "jobs": a.jobs,
            "driver": " ".join(["python", "bench/paper_claims.py", *sys.argv[1:]]), "rows": rows}


def print_table(summary: dict) -> None:
    ranks = summary["ranks"]
    print(f"\n{summary['task']}: test accuracy, mean ± std [min, max] over seeds {summary['seeds']}, "
          f"{summary['epochs']} epochs")
    print(f"{'arm':42s}" + "".join(f"{'r=' + str(r):>26s}" for r in ranks))
    for arm in FULL_ARMS + ARMS:
        rs = [row for row in summary["rows"] if row["arm"] == arm]
        cells = []
        for r in ranks:
            row = next((x for x in rs if x["r"] == r or arm in FULL_ARMS), None)
            if row is None or row["mean"] is None:
                cells.append(f"{'-':>26s}")
                continue
            sd = f"±{row['std'] * 100:.1f}" if row["std"] is not None else ""
            cells.append(f"{row['mean'] * 100:6.1f}{sd:>5s} [{row['min'] * 100:.1f},{row['max'] * 100:.1f}] n={row['n']}".rjust(26))
        print(f"{ARM_LABEL[arm]:42s}" + "".join(cells))


def markdown_table(summary: dict) -> str:
    """The summary as a markdown table: mean (min..max) in % per arm and r, n = seeds finished."""
    ranks = summary["ranks"]
    lines = ["| arm | " + " | ".join(f"r = {r}" for r in ranks) + " |", "|---|" + "---|" * len(ranks)]
    for arm in FULL_ARMS + ARMS:
        cells = []
        for r in ranks:
            row = next((x for x in summary["rows"] if x["arm"] == arm and (x["r"] == r or arm in FULL_ARMS)), None)
            if row is None or row["mean"] is None:
                cells.append("not run")
                continue
            n = "" if row["n"] == len(summary["seeds"]) else f" (n={row['n']})"
            cells.append(f"{row['mean'] * 100:.1f} ({row['min'] * 100:.1f}..{row['max'] * 100:.1f}){n}")
        if arm in FULL_ARMS:
            if cells[0] == "not run":
                continue
            cells = [cells[0] + f" (N = {summary['d_state']})"] + ["same"] * (len(ranks) - 1)
        lines.append(f"| {ARM_LABEL[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, ls in zip(FULL_ARMS, ("--", "-.")):
        full = next(x for x in summary["rows"] if x["arm"] == arm)
        if full["mean"] is not None:
            ax.axhline(full["mean"] * 100, color="k", ls=ls, lw=1, label=f"{ARM_LABEL[arm]} (N={summary['d_state']})")
    for arm in ARMS:
        rs = sorted((x for x in summary["rows"] if x["arm"] == arm and x["mean"] is not None), key=lambda x: x["r"])
        if not rs:
            continue
        xs = [x["r"] for x in rs]
        ys = [x["mean"] * 100 for x in rs]
        lo = [y - x["min"] * 100 for x, y in zip(rs, ys)]
        hi = [x["max"] * 100 - y for x, y in zip(rs, ys)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=ARM_LABEL[arm],
                    ls="-" if arm.endswith("ft") or arm in ("small", "inred") else ":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary["ranks"])
    ax.set_xticklabels([str(r) for r in summary["ranks"]])
    ax.set_xlabel("modes per channel r")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{summary['task']}: mean, min-max over seeds {summary['seeds']}, {summary['epochs']} epochs")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist1d")
    ap.add_argument("--task-option", action="append", default=[], help="KEY=VALUE, passed to every run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ranks", default="16,8,4", help="in priority order (runs are scheduled rank by rank)")
    ap.add_argument("--control-ranks", default="", help="ranks for the small_2x control arm (scheduled last)")
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--reduce-until", type=float, default=0.2)
    ap.add_argument("--horizon", default="40", help="for the horizon-BT arm: an integer or 'auto'")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="default: runs/paper_claims_<task>")
    ap.add_argument("--out", default=None, help="default: docs/data/paper_claims_<task>.json")
    ap.add_argument("--plot", default=None, help="default: docs/figures/accuracy_vs_rank_<task>.png")
    ap.add_argument("--arms", default="", help="comma list: run only these arms, e.g. small_2x (default all)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--collect-only", action="store_true", help="summarise cached runs, start nothing")
    a = ap.parse_args()
    a.seeds = [int(x) for x in a.seeds.split(",")]
    a.ranks = [int(x) for x in a.ranks.split(",")]
    a.control_ranks = [int(x) for x in a.control_ranks.split(",") if x]
    tag = a.task.split(":")[0].replace("/", "_")
    a.workdir = a.workdir or f"runs/paper_claims_{tag}"
    summary = collect(a, Path(a.workdir)) if a.collect_only else run(a)
    print_table(summary)
    if a.markdown:
        print(markdown_table(summary))
    out = Path(a.out or f"docs/data/paper_claims_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    plot(summary, Path(a.plot or f"docs/figures/accuracy_vs_rank_{tag}.png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
