"""What float32 parameter storage costs an imported model: the kernel recomputed from the stored parameters
against the source's own formula in float64, over lengths L (the import check's `kernel rel` column).

Sources: the three reference fixtures in tests/data (upstream weights), and one synthetic DSS layer with slow,
fast-rotating modes (Re Lambda = -0.05, dt ~ 1e-3, Im Lambda up to 290: a memory of ~2e4 steps), the case where
rounding Lambda to float32 shows: the phase error grows with dt |Im Lambda| l until the mode has decayed.

    OMP_NUM_THREADS=1 python bench/import_float32.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgessm.importers import check_import, import_model, source_options

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
LENGTHS = (1024, 4096, 16384)


def slow_dss(path: Path) -> None:
    rng = np.random.default_rng(0)
    H, N = 8, 32
    sd = {"D": torch.randn(1, H), "kernel.W": torch.randn(1, H, N, 2),
          "output_linear.weight": torch.randn(H, H), "output_linear.bias": torch.randn(H, 1),
          "kernel.log_dt": torch.tensor(np.log(1e-3) + rng.uniform(0, 0.5, (H, 2))).float(),
          "kernel.Lambda_log_neg_re": torch.tensor(np.log(np.full(N, 0.05))).float(),
          "kernel.Lambda_im": torch.tensor(3 * np.pi * np.arange(N)).float()}
    torch.save(sd, path)


def main() -> int:
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    slow_dss(tmp / "slow_dss.pt")
    cases = [("s4d-standalone", "s4d", DATA / "s4d-standalone" / "state_dict.pt", source_options(DATA / "s4d-standalone" / "config.json")),
             ("s4-block-diag", "s4", DATA / "s4-block-diag" / "state_dict.pt", source_options(DATA / "s4-block-diag" / "config.json")),
             ("dss (exp)", "dss", DATA / "dss" / "state_dict.pt", source_options(DATA / "dss" / "config.json")),
             ("synthetic slow DSS", "dss", tmp / "slow_dss.pt", {"version": "exp"})]
    print("| source | " + " | ".join(f"L = {L}" for L in LENGTHS) + " | float64 map, worst |")
    print("|---" * (len(LENGTHS) + 2) + "|")
    for name, family, path, opts in cases:
        model, imp = import_model(path, family, opts)
        stored, exact = [], 0.0
        for L in LENGTHS:
            c = check_import(model, imp, L)
            stored.append(max(l["kernel_rel"] for l in c["layers"]))
            exact = max(exact, max(l["kernel_rel_float64"] for l in c["layers"]))
        print(f"| {name} | " + " | ".join(f"{e:.1e}" for e in stored) + f" | {exact:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
