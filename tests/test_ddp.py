"""Multi-process training under torchrun (DDP, gloo on CPU): both ranks end with identical weights."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import save_file
    from edgessm.config import ModelConfig
    from edgessm.model import SSMModel
    from edgessm.tasks import load_task
    from edgessm.train import TrainConfig, train
    rank = int(os.environ["RANK"])
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's weights
    data = load_task("mnist1d", num_samples=400)
    model = SSMModel(ModelConfig(d_model=8, n_layers=2, d_state=4))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(model, data, TrainConfig(epochs=1, batch_size=40, seed=0, threads=1, device="cpu"), progress=False)
    sd = {k: v.contiguous() for k, v in res.model.state_dict().items()}
    save_file(sd, os.path.join(sys.argv[1], f"rank{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in init.items()}, os.path.join(sys.argv[1], f"init{rank}.safetensors"))
""")


def test_two_gloo_ranks_end_identical(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    i0, i1 = load_file(str(tmp_path / "init0.safetensors")), load_file(str(tmp_path / "init1.safetensors"))
    assert any(not torch.equal(i0[k], i1[k]) for k in i0)  # the ranks really started apart
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # DDP: same all-reduced gradients -> bitwise equal weights
    assert any(not torch.equal(w0[k], i0[k]) for k in w0)  # and training moved them
