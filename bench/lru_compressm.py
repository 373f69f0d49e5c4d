"""CompreSSM's claims on the LRU at CompreSSM's single-block sMNIST shape (N = 256, H = 8), on mnist1d or delay.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/lru_compressm.py --seeds 0 1 2 --jobs 2 \
        --epochs 25 --workdir /tmp/lruexp/run25 --json docs/data/lru_compressm.json
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/lru_compressm.py --task delay --norm none \
        --pooling none --seeds 0 1 2 --jobs 2 --epochs 25 --workdir /tmp/lruexp/delay \
        --json docs/data/lru_compressm_delay.json

Arms per seed, all through the `edgessm` CLI (one block, CompreSSM's block: BatchNorm (or --norm), LRU, tanh GELU):
  full         trained at d_state 256
  it<tau>      in-training reduction with CompreSSM's rule: keep 1 - tau of the Hankel energy, reduce
               only when the new size < 0.95 n, at evaluation points in the first --reduce-until of training
  small<tau>   trained from scratch at it<tau>'s final size, same epochs
  small<tau>x2 the same with twice the epochs: the compute-matched control for btft<tau>
  bt<tau>      BT of `full` to that size (`edgessm compress`), no retraining
  btft<tau>    the same + main training (`edgessm finetune`, same epochs as the small arm; Ezoe & Sato 2024)
  it<tau>-index, it<tau>-reset   it<tau> at --moments-tau with the reduced layers' Adam moments cut by index
               (CompreSSM's practice) or every moment restarted, beside edgessm's default (restart only the
               reshaped parameters' moments)
  rvc          real-map balancing (edgessm) vs complex-map balancing (CompreSSM's code) on `full` at
               those sizes (bench/mimo_real_vs_complex.py)
Every arm writes its JSON into the workdir; an arm whose JSON exists is not rerun (resumable). The score
is the task's metric: test accuracy (mnist1d, higher is better) or test MSE (delay, lower is better).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAUS = (0.01, 0.02, 0.04)  # CompreSSM's sMNIST thresholds (its 1% and 4% rows, and the one between)
MOMENT_MODES = ("index", "reset")  # beside the default "fresh" (edgessm.config.TrainConfig.reduce_moments)


def _edgessm() -> list[str]:
    exe = Path(sys.executable).with_name("edgessm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgessm.cli"]


def _run(cmd: list[str], out_json: Path) -> dict:
    """Run one arm; its stdout (the --json result) goes to a temp file renamed on success."""
    if out_json.exists():
        return json.loads(out_json.read_text())
    tmp = out_json.with_suffix(".tmp")
    t0 = time.perf_counter()
    with open(tmp, "w") as f, open(out_json.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=f, stderr=log).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {rc}); see {out_json.with_suffix('.log')}")
    res = json.loads(tmp.read_text())
    res["wall_s"] = wall
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out_json)
    return res


def _final_size(res: dict) -> int:
    return int(res["ranks"][0])  # one block: one layer


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--d-state", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=8)
    ap.add_argument("--reduce-until", type=float, default=0.2)
    ap.add_argument("--task", default="mnist1d")
    ap.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--moments-tau", type=float, default=0.02, help="the tau of the Adam-moment arms (0: none)")
    ap.add_argument("--taus", type=float, nargs="+", default=list(TAUS), help="energy thresholds tau (fractions)")
    ap.add_argument("--no-retraining-controls", action="store_true",
                    help="leave out the 2x-epoch small arm and BT + main training (for long tasks)")
    ap.add_argument("--workdir", default="/tmp/lruexp")
    ap.add_argument("--json", default=str(HERE.parent / "docs" / "data" / "lru_compressm.json"))
    a = ap.parse_args(argv)
    W = Path(a.workdir)
    W.mkdir(parents=True, exist_ok=True)
    E = _edgessm()
    task = ["--task", a.task, *[x for o in a.task_option for x in ("--task-option", o)]]
    model = ["--layer", "lru", "--norm", a.norm, "--activation", "gelu_tanh", "--pooling", a.pooling,
             "--d-model", str(a.d_model), "--n-layers", "1"]
    base = [*task, *model, "--quiet", "--json"]
    epochs = lambda k: ["--epochs", str(k * a.epochs)]  # noqa: E731
    tag = lambda tau: f"{tau * 100:g}"  # noqa: E731  "1" for 0.01, "1.5" for 0.015: distinct taus, distinct files

    def train(seed, name, extra):
        extra = extra if "--epochs" in extra else [*epochs(1), *extra]
        return _run(E + ["train", *base, "--seed", str(seed), *extra, "-o", str(W / f"s{seed}-{name}.safetensors")],
                    W / f"s{seed}-{name}.json")

    # phase 1: the arms that need nothing else (full, in-training reduction at each tau)
    jobs1 = []
    for s in a.seeds:
        jobs1.append((s, "full", ["--d-state", str(a.d_state)]))
        for tau in a.taus:
            it = ["--d-state", str(a.d_state), "--reduce-energy", f"{1 - tau:g}",
                  "--reduce-until", f"{a.reduce_until:g}", "--reduce-min-drop", "0.05"]
            jobs1.append((s, f"it{tag(tau)}", it))
            if abs(tau - a.moments_tau) < 1e-12:
                for mode in MOMENT_MODES:
                    jobs1.append((s, f"it{tag(tau)}-{mode}", [*it, "--reduce-moments", mode]))
    with ThreadPoolExecutor(a.jobs) as ex:
        r1 = dict(zip([(s, n) for s, n, _ in jobs1], ex.map(lambda j: train(*j), jobs1)))

    # phase 2: the arms sized by phase 1 (small from scratch; BT of full, then finetune; real vs complex)
    def bt_arm(s, tau, n):
        full = W / f"s{s}-full.safetensors"
        bt = W / f"s{s}-bt{tag(tau)}.safetensors"
        c = _run(E + ["compress", str(full), "--rank", str(n), "-o", str(bt), "--json"], W / f"s{s}-bt{tag(tau)}-c.json")
        e = _run(E + ["eval", str(bt), *task, "--json"], W / f"s{s}-bt{tag(tau)}-e.json")
        if a.no_retraining_controls:
            return {"compress": c, "eval": e, "finetune": None}
        ft = _run(E + ["finetune", str(bt), *task, *epochs(1), "--seed", str(s),
                       "-o", str(W / f"s{s}-btft{tag(tau)}.safetensors"), "--quiet", "--json"],
                  W / f"s{s}-btft{tag(tau)}.json")
        return {"compress": c, "eval": e, "finetune": ft}

    def rvc_arm(s, ranks):
        out = W / f"s{s}-rvc.json"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            with open(out.with_suffix(".log"), "w") as log:
                subprocess.run([sys.executable, str(HERE / "mimo_real_vs_complex.py"), str(W / f"s{s}-full.safetensors"),
                                "--ranks", *map(str, ranks), "--json", str(tmp)], stdout=log, stderr=log, check=True)
            os.replace(tmp, out)
        return json.loads(out.read_text())

    jobs2 = []
    for s in a.seeds:
        sizes = {tau: _final_size(r1[(s, f"it{tag(tau)}")]) for tau in a.taus}
        for tau, n in sizes.items():
            jobs2.append(((s, f"small{tag(tau)}"), lambda s=s, tau=tau, n=n: train(s, f"small{tag(tau)}", ["--d-state", str(n)])))
            if not a.no_retraining_controls:
                jobs2.append(((s, f"small{tag(tau)}x2"),
                              lambda s=s, tau=tau, n=n: train(s, f"small{tag(tau)}x2", ["--d-state", str(n), *epochs(2)])))
            jobs2.append(((s, f"bt{tag(tau)}"), lambda s=s, tau=tau, n=n: bt_arm(s, tau, n)))
        jobs2.append(((s, "rvc"), lambda s=s, r=sorted(set(sizes.values()), reverse=True): rvc_arm(s, r)))
    with ThreadPoolExecutor(a.jobs) as ex:
        r2 = dict(zip([k for k, _ in jobs2], ex.map(lambda j: j[1](), jobs2)))

    rows = []
    for s in a.seeds:
        row = {"seed": s, "full": r1[(s, "full")]["test"], "full_s": r1[(s, "full")]["wall_s"], "taus": {}}
        metric = r1[(s, "full")]["metric"]  # "accuracy" or "mse": the key of `edgessm eval --json`
        for tau in a.taus:
            t = tag(tau)
            it = r1[(s, f"it{t}")]
            n = _final_size(it)
            bt = r2[(s, f"bt{t}")]
            row["taus"][t] = {
                "size": n, "schedule": [ev["ranks"][0] for ev in it["rank_schedule"]],
                "it": it["test"], "it_s": it["wall_s"],
                "small": r2[(s, f"small{t}")]["test"], "small_s": r2[(s, f"small{t}")]["wall_s"],
                "small2x": r2[(s, f"small{t}x2")]["test"] if (s, f"small{t}x2") in r2 else None,
                "small2x_s": r2[(s, f"small{t}x2")]["wall_s"] if (s, f"small{t}x2") in r2 else None,
                "bt": bt["eval"][metric], "bt_bounds_hold": bt["compress"]["bounds_hold"],
                # one block: the layer's certified bound and the measured ||G - G_saved||_inf
                "bt_certified": bt["compress"]["layers"][0].get("max_certified"),
                "bt_measured": bt["compress"]["layers"][0].get("max_measured_hinf"),
                "btft": bt["finetune"]["test"] if bt["finetune"] else None,
                "btft_s": bt["finetune"]["wall_s"] if bt["finetune"] else None,
                "rvc": next(r for r in r2[(s, "rvc")] if r["r"] == n),  # the bench's --json: a list of rows
            }
            for mode in MOMENT_MODES:
                if (s, f"it{t}-{mode}") in r1:
                    m = r1[(s, f"it{t}-{mode}")]
                    row["taus"][t][f"it_{mode}"] = m["test"]
                    row["taus"][t][f"it_{mode}_size"] = _final_size(m)
        rows.append(row)
        print(json.dumps({"seed": s, "full": row["full"],
                          **{t: {k: v for k, v in d.items() if k in ("size", "it", "small", "small2x", "bt", "btft")}
                             for t, d in row["taus"].items()}}))
    result = {"command": " ".join(["python", "bench/lru_compressm.py", *(argv if argv is not None else sys.argv[1:])]),
              "task": a.task, "task_options": a.task_option, "norm": a.norm, "pooling": a.pooling, "metric": metric,
              "epochs": a.epochs, "d_state": a.d_state, "d_model": a.d_model, "reduce_until": a.reduce_until,
              "rows": rows}
    tmp = Path(a.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, a.json)
    print(table(result))
    return result


def table(result: dict) -> str:
    """The markdown tables of docs/results.md: per seed, then the mean over seeds (accuracy in %, or MSE)."""
    acc = result.get("metric", "accuracy") == "accuracy"
    num = (lambda v: f"{100 * v:.1f}") if acc else (lambda v: f"{v:.2g}")  # noqa: E731
    fmt = lambda v: "-" if v is None else num(v)  # noqa: E731  an arm left out (--no-retraining-controls)
    rows = result["rows"]

    def mean(f):
        vals = [f(r) for r in rows]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)
    lines = [f"| seed | tau | full (256) | in-training reduction: final size (schedule) | {'accuracy' if acc else 'MSE'} "
             "| trained small from scratch | same, 2x epochs | BT of full, no retraining | BT of full + main training "
             "| real-map error: complex-map BT / real-map BT |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in rows[0]["taus"]:
        for r in rows:
            d = r["taus"][t]
            lines.append(f"| {r['seed']} | {t}% | {fmt(r['full'])} | {d['size']} ({' -> '.join(map(str, d['schedule']))}) "
                         f"| {fmt(d['it'])} | {fmt(d['small'])} | {fmt(d.get('small2x'))} | {fmt(d['bt'])} | {fmt(d.get('btft'))} "
                         f"| {d['rvc']['complex_map']:.3f} / {d['rvc']['real_map']:.3f} |")
        m = lambda k: mean(lambda r: r["taus"][t].get(k))  # noqa: E731
        lines.append(f"| mean | {t}% | {fmt(mean(lambda r: r['full']))} | {m('size'):.1f} | **{fmt(m('it'))}** "
                     f"| **{fmt(m('small'))}** | {fmt(m('small2x'))} | {fmt(m('bt'))} | **{fmt(m('btft'))}** "
                     f"| {mean(lambda r: r['taus'][t]['rvc']['complex_map']):.3f} / "
                     f"{mean(lambda r: r['taus'][t]['rvc']['real_map']):.3f} |")
    moments = [t for t in rows[0]["taus"] if all(f"it_{mode}" in r["taus"][t] for r in rows for mode in MOMENT_MODES)]
    for t in moments:
        lines += ["", f"Adam moments of the reduced layers at tau = {t}% (final sizes in brackets):", "",
                  "| seed | fresh (edgessm's default) | cut by index (CompreSSM) | every moment restarted |",
                  "|---|---|---|---|"]
        for r in rows:
            d = r["taus"][t]
            lines.append(f"| {r['seed']} | {fmt(d['it'])} ({d['size']}) | "
                         + " | ".join(f"{fmt(d[f'it_{mode}'])} ({d[f'it_{mode}_size']})" for mode in MOMENT_MODES) + " |")
        lines.append("| mean | " + " | ".join(f"**{fmt(mean(lambda r: r['taus'][t][k]))}**"
                                               for k in ("it", *(f"it_{mode}" for mode in MOMENT_MODES))) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
