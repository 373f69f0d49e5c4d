"""The built-in delay task (delayed recall of a noise signal) and what in-training reduction does with Adam's moments."""
import numpy as np
import pytest
import torch

from edgessm.compress import in_training_reducer
from edgessm.config import ModelConfig, TrainConfig
from edgessm.errors import ConfigError, TaskError
from edgessm.model import SSMModel
from edgessm.tasks import load_task, task_names
from edgessm.train import build_optimizer, rebuild_optimizer, train


def test_target_is_the_delayed_input():
    d = load_task("delay", num_train=20, num_test=10, length=64, delay=17)
    assert "delay" in task_names() and d.task_type == "regression" and d.per_step_targets
    assert d.x_train.shape == (20, 64, 1) and d.y_test.shape == (10, 64, 1) and d.x_train.dtype == np.float32
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert np.array_equal(y[:, 17:], x[:, :-17]) and not y[:, :17].any()  # exact copy, zero before the start
    assert d.meta["minimal_real_states"] == 17 and d.meta["mse_of_zero_prediction"] == pytest.approx(47 / 64)


@pytest.mark.parametrize("bandwidth", [0.5, 0.2, 0.05])
def test_signal_is_unit_variance_and_band_limited(bandwidth):
    d = load_task("delay", num_train=400, num_test=100, length=256, delay=8, bandwidth=bandwidth)
    u = d.x_train[:, :, 0].astype(np.float64)
    # 400 x 256 samples, correlated over ~1/(2 bandwidth) steps: the sample variance is within a few % of 1
    assert abs(u.var() - 1.0) < 0.05 + 0.02 / bandwidth ** 0.5
    # a 256-step window of the masked process leaks only through its edges: power beyond 1.5x the band
    # edge is a small fraction (white noise would put (0.5 - 1.5 bw) / 0.5 of it there)
    f = np.fft.rfftfreq(256)
    p = (np.abs(np.fft.rfft(u * np.hanning(256), axis=1)) ** 2).mean(0)
    if bandwidth < 0.5:
        assert p[f > 1.5 * bandwidth].sum() / p.sum() < 1e-3
    else:
        assert p[f > 0.25].sum() / p.sum() == pytest.approx(0.5, abs=0.05)
    assert d.meta["minimal_real_states"] == int(np.ceil(2 * bandwidth * 8))


def test_seeded_and_options_checked():
    a, b = load_task("delay", seed=3, num_train=8, num_test=4), load_task("delay", seed=3, num_train=8, num_test=4)
    c = load_task("delay", seed=4, num_train=8, num_test=4)
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:4], a.x_test)  # train and test are different draws
    for bad in ({"delay": 128}, {"delay": 0}, {"bandwidth": 0.0}, {"bandwidth": 0.7}, {"bandwidth": "x"},
                {"length": 1}, {"num_train": 1.5}, {"cache": True}):
        with pytest.raises(TaskError, match="delay"):
            load_task("delay", **bad)


def test_size_limit_is_checked_before_generating(monkeypatch):
    monkeypatch.setenv("EDGESSM_MAX_DATA_BYTES", str(1 << 20))
    with pytest.raises(TaskError, match="GiB"):
        load_task("delay", num_train=100000, length=1000, delay=10)


# ---- Adam moments across an in-training reduction -------------------------------------------------
def _reduced(layer: str):
    cfg = ModelConfig(d_input=1, d_output=1, d_model=4, n_layers=1, d_state=12, layer=layer, pooling="none",
                      task_type="regression")
    torch.manual_seed(0)
    model = SSMModel(cfg)
    opt = build_optimizer(model, TrainConfig())
    x = torch.randn(4, 30, 1)
    for _ in range(3):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()
    new, _ = in_training_reducer(model, TrainConfig(reduce_rank=5))
    assert new is not model
    return model, opt, new


@pytest.mark.parametrize("layer", ["lru", "s4d"])
def test_moments_fresh_index_reset(layer):
    old_model, old, new = _reduced(layer)
    old_p, new_p = dict(old_model.named_parameters()), dict(new.named_parameters())
    reshaped = [n for n in new_p if new_p[n].shape != old_p[n].shape]
    kept = [n for n in new_p if new_p[n].shape == old_p[n].shape and torch.equal(new_p[n], old_p[n])]
    rewritten = [n for n in new_p if new_p[n].shape == old_p[n].shape and not torch.equal(new_p[n], old_p[n])]
    assert reshaped and kept
    fresh = rebuild_optimizer(old, old_model, new, TrainConfig(reduce_moments="fresh"))
    index = rebuild_optimizer(old, old_model, new, TrainConfig(reduce_moments="index"))
    reset = rebuild_optimizer(old, old_model, new, TrainConfig(reduce_moments="reset"))
    assert not reset.state
    for n in kept:  # untouched weights keep their statistics in both carrying modes
        for opt in (fresh, index):
            assert torch.equal(opt.state[new_p[n]]["exp_avg_sq"], old.state[old_p[n]]["exp_avg_sq"])
    for n in rewritten:  # same shape, new values (an S4D reduction can rewrite D): fresh restarts it
        assert new_p[n] not in fresh.state and new_p[n] in index.state
    for n in reshaped:
        assert new_p[n] not in fresh.state
        cut = tuple(slice(0, s) for s in new_p[n].shape)
        st = index.state[new_p[n]]
        assert torch.equal(st["exp_avg"], old.state[old_p[n]]["exp_avg"][cut])
        assert st["exp_avg"].shape == new_p[n].shape and float(st["step"]) == 3.0
    with pytest.raises(ConfigError, match="reduce_moments"):
        TrainConfig(reduce_moments="transform").validate()


def test_moments_modes_change_training():
    """The three modes run through the training loop and give different models (the option is used)."""
    data = load_task("delay", num_train=60, num_test=20, length=24, delay=3)
    cfg = ModelConfig(d_input=1, d_output=1, d_model=4, n_layers=1, d_state=16, layer="lru", pooling="none",
                      task_type="regression")
    finals = {}
    for mode in ("fresh", "index", "reset"):
        torch.manual_seed(0)
        tc = TrainConfig(epochs=4, batch_size=20, reduce_rank=6, reduce_until=0.5, reduce_moments=mode, seed=0)
        res = train(SSMModel(cfg), data, tc, reducer=in_training_reducer, progress=False)
        assert res.rank_schedule[-1]["ranks"] == [6] and np.isfinite(res.test_metrics["mse"])
        finals[mode] = torch.cat([p.detach().flatten() for p in res.model.parameters()])
    assert not torch.equal(finals["fresh"], finals["index"]) and not torch.equal(finals["fresh"], finals["reset"])


def test_reduce_every_sets_the_reduction_points():
    """CompreSSM's reduction steps: evaluation points that are multiples of the reduction interval."""
    data = load_task("delay", num_train=60, num_test=20, length=24, delay=3)
    cfg = ModelConfig(d_input=1, d_output=1, d_model=4, n_layers=1, d_state=16, layer="lru", pooling="none",
                      task_type="regression")
    torch.manual_seed(0)
    tc = TrainConfig(epochs=6, batch_size=20, reduce_energy=0.5, reduce_min_drop=0.0, reduce_until=1.0,
                     reduce_every=3, seed=0)
    res = train(SSMModel(cfg), data, tc, reducer=in_training_reducer, progress=False)
    assert [ev["epoch"] for ev in res.rank_schedule[1:]] and all(ev["epoch"] % 3 == 0 for ev in res.rank_schedule[1:])
    with pytest.raises(ConfigError, match="never run"):
        TrainConfig(epochs=10, reduce_rank=4, reduce_until=0.2, reduce_every=3).validate()
