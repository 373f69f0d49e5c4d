"""CompreSSM's claims on the LRU at CompreSSM's single-block sMNIST shape (N = 256, H = 8), on mnist1d.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/lru_compressm.py --seeds 0 1 2 --jobs 2 \
        --epochs 15 --workdir /tmp/lruexp --json docs/data/lru_compressm.json

Arms per seed, all through the `edgessm` CLI (one block, CompreSSM's block: BatchNorm, LRU, tanh GELU):
  full         trained at d_state 256
  it<tau>      in-training reduction with CompreSSM's rule: keep 1 - tau of the Hankel energy, reduce
               only when the new size < 0.95 n, at evaluation points in the first --reduce-until of training
  small<tau>   trained from scratch at it<tau>'s final size, same epochs
  bt<tau>      BT of `full` to that size (`edgessm compress`), no retraining
  btft<tau>    the same + main training (`edgessm finetune`, same epochs as the small arm; Ezoe & Sato 2024)
  rvc          real-map balancing (edgessm) vs complex-map balancing (CompreSSM's code) on `full` at
               those sizes (bench/mimo_real_vs_complex.py)
Every arm writes its JSON into the workdir; an arm whose JSON exists is not rerun (resumable).
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
TAUS = (0.01, 0.02, 0.04)


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
    ap.add_argument("--workdir", default="/tmp/lruexp")
    ap.add_argument("--json", default=str(HERE.parent / "docs" / "data" / "lru_compressm.json"))
    a = ap.parse_args(argv)
    W = Path(a.workdir)
    W.mkdir(parents=True, exist_ok=True)
    E = _edgessm()
    base = ["--task", "mnist1d", "--layer", "lru", "--norm", "batch", "--activation", "gelu_tanh",
            "--d-model", str(a.d_model), "--n-layers", "1", "--epochs", str(a.epochs), "--quiet", "--json"]
    tag = lambda tau: f"{round(tau * 100)}"  # noqa: E731

    def train(seed, name, extra):
        return _run(E + ["train", *base, "--seed", str(seed), *extra, "-o", str(W / f"s{seed}-{name}.safetensors")],
                    W / f"s{seed}-{name}.json")

    # phase 1: the arms that need nothing else (full, in-training reduction at each tau)
    jobs1 = []
    for s in a.seeds:
        jobs1.append((s, "full", ["--d-state", str(a.d_state)]))
        for tau in TAUS:
            jobs1.append((s, f"it{tag(tau)}", ["--d-state", str(a.d_state), "--reduce-energy", f"{1 - tau:g}",
                                               "--reduce-until", f"{a.reduce_until:g}", "--reduce-min-drop", "0.05"]))
    with ThreadPoolExecutor(a.jobs) as ex:
        r1 = dict(zip([(s, n) for s, n, _ in jobs1], ex.map(lambda j: train(*j), jobs1)))

    # phase 2: the arms sized by phase 1 (small from scratch; BT of full, then finetune; real vs complex)
    def bt_arm(s, tau, n):
        full = W / f"s{s}-full.safetensors"
        bt = W / f"s{s}-bt{tag(tau)}.safetensors"
        c = _run(E + ["compress", str(full), "--rank", str(n), "-o", str(bt), "--json"], W / f"s{s}-bt{tag(tau)}-c.json")
        e = _run(E + ["eval", str(bt), "--task", "mnist1d", "--json"], W / f"s{s}-bt{tag(tau)}-e.json")
        ft = _run(E + ["finetune", str(bt), "--task", "mnist1d", "--epochs", str(a.epochs), "--seed", str(s),
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
        sizes = {tau: _final_size(r1[(s, f"it{tag(tau)}")]) for tau in TAUS}
        for tau, n in sizes.items():
            jobs2.append(((s, f"small{tag(tau)}"), lambda s=s, tau=tau, n=n: train(s, f"small{tag(tau)}", ["--d-state", str(n)])))
            jobs2.append(((s, f"bt{tag(tau)}"), lambda s=s, tau=tau, n=n: bt_arm(s, tau, n)))
        jobs2.append(((s, "rvc"), lambda s=s, r=sorted(set(sizes.values()), reverse=True): rvc_arm(s, r)))
    with ThreadPoolExecutor(a.jobs) as ex:
        r2 = dict(zip([k for k, _ in jobs2], ex.map(lambda j: j[1](), jobs2)))

    rows = []
    for s in a.seeds:
        row = {"seed": s, "full": r1[(s, "full")]["test"], "full_s": r1[(s, "full")]["wall_s"], "taus": {}}
        for tau in TAUS:
            t = tag(tau)
            it = r1[(s, f"it{t}")]
            n = _final_size(it)
            bt = r2[(s, f"bt{t}")]
            row["taus"][t] = {
                "size": n, "schedule": [ev["ranks"][0] for ev in it["rank_schedule"]],
                "it": it["test"], "it_s": it["wall_s"],
                "small": r2[(s, f"small{t}")]["test"], "small_s": r2[(s, f"small{t}")]["wall_s"],
                "bt": bt["eval"]["accuracy"], "bt_bounds_hold": bt["compress"]["bounds_hold"],
                "btft": bt["finetune"]["test"], "btft_s": bt["finetune"]["wall_s"],
                "rvc": next(r for r in r2[(s, "rvc")] if r["r"] == n),  # the bench's --json: a list of rows
            }
        rows.append(row)
        print(json.dumps({"seed": s, "full": row["full"],
                          **{t: {k: v for k, v in d.items() if k in ("size", "it", "small", "bt", "btft")}
                             for t, d in row["taus"].items()}}))
    result = {"command": " ".join(["python", "bench/lru_compressm.py", *(argv if argv is not None else sys.argv[1:])]),
              "epochs": a.epochs, "d_state": a.d_state, "d_model": a.d_model, "reduce_until": a.reduce_until,
              "rows": rows}
    tmp = Path(a.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, a.json)
    print(table(result))
    return result


def table(result: dict) -> str:
    """The markdown table of docs/results.md: per seed, then the mean over seeds (accuracies in %)."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["| seed | tau | full (256) | in-training reduction: final size (schedule) | accuracy | trained small "
             "from scratch | BT of full, no retraining | BT of full + main training | real-map error: complex-map "
             "BT / real-map BT |", "|---|---|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    for t in rows[0]["taus"]:
        for r in rows:
            d = r["taus"][t]
            lines.append(f"| {r['seed']} | {t}% | {pct(r['full'])} | {d['size']} ({' -> '.join(map(str, d['schedule']))}) "
                         f"| {pct(d['it'])} | {pct(d['small'])} | {pct(d['bt'])} | {pct(d['btft'])} "
                         f"| {d['rvc']['complex_map']:.3f} / {d['rvc']['real_map']:.3f} |")
        m = lambda k: sum(r["taus"][t][k] for r in rows) / len(rows)  # noqa: E731
        lines.append(f"| mean | {t}% | {pct(sum(r['full'] for r in rows) / len(rows))} | {m('size'):.1f} | "
                     f"**{pct(m('it'))}** | **{pct(m('small'))}** | {pct(m('bt'))} | **{pct(m('btft'))}** | "
                     f"{sum(r['taus'][t]['rvc']['complex_map'] for r in rows) / len(rows):.3f} / "
                     f"{sum(r['taus'][t]['rvc']['real_map'] for r in rows) / len(rows):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
