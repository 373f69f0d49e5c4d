"""The deep model: step mode reproduces forward at every step; systems map in and out."""
import numpy as np
import pytest
import torch

from edgessm.config import ModelConfig
from edgessm.errors import ConfigError
from edgessm.model import SSMModel, diagonal_systems, with_diagonal_systems

# float32 network of a few blocks over 300 steps: step vs FFT conv differ by rounding only, and
# LayerNorm/GLU keep values O(1), so 1e-4 relative to the output scale is ~1000 eps with margin.
TOL = 1e-4


def _step_all(model, x):
    with torch.no_grad():
        state, cache = model.init_state(x.shape[0]), model.step_cache()
        ys = []
        for k in range(x.shape[1]):
            y, state = model.step(x[:, k], state, cache)
            ys.append(y)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("cfg", [
    dict(),  # the default: S4D, GLU, mean pooling
    dict(layer="dss", init="skew-hippo", pooling="last", mixing="linear"),
    dict(pooling="none", prenorm=False, activation="tanh", mixing="none", task_type="regression", d_output=3),
    dict(vocab_size=17, d_input=1, init="s4d-inv"),
])
def test_step_reproduces_forward_at_every_step(cfg):
    torch.manual_seed(0)
    c = ModelConfig(d_model=16, n_layers=2, d_state=8, **cfg)
    model = SSMModel(c).eval()
    x = torch.randint(1, 17, (3, 300)) if c.vocab_size else torch.randn(3, 300, c.d_input)
    with torch.no_grad():
        y_full = model(x)
    y_step = _step_all(model, x)
    scale = y_full.abs().max().item()
    assert y_full.shape == (3, 300, c.d_output)
    assert (y_step - y_full).abs().max().item() <= TOL * max(scale, 1.0)


def test_mean_pooling_is_causal():
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_model=8, n_layers=1, d_state=4)).eval()
    x = torch.randn(1, 50, 1)
    x2 = x.clone()
    x2[:, 30:] = 5.0  # change only the future
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :30], model(x2)[:, :30], atol=1e-6)
        assert not torch.allclose(model(x)[:, 30:], model(x2)[:, 30:], atol=1e-3)


def test_with_diagonal_systems_identity_and_shapes():
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_model=8, n_layers=2, d_state=6, layer="dss", init="skew-hippo")).eval()
    systems = diagonal_systems(model)
    assert [s.A.shape for s in systems] == [(8, 6), (8, 6)]
    assert all(s.is_stable() for s in systems)
    new = with_diagonal_systems(model, systems).eval()
    assert new.config.layer == "s4d" and new.config.layer_d_state == [6, 6]
    x = torch.randn(2, 64, 1)
    with torch.no_grad():
        assert (new(x) - model(x)).abs().max().item() <= 1e-4


def test_with_diagonal_systems_smaller_state():
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_model=8, n_layers=2, d_state=6)).eval()
    small = [s.channel(slice(None)) for s in diagonal_systems(model)]
    from edgessm.ssm import DiagonalSSM
    small = [DiagonalSSM(s.A[:, :3], s.B[:, :3], s.C[:, :3], s.D) for s in small]
    new = with_diagonal_systems(model, small)
    assert new.config.layer_d_state == [3, 3]
    assert [len(p) for p in [new.blocks[0].ssm.log_A_real]] == [8]
    for got, want in zip(diagonal_systems(new), small):
        np.testing.assert_allclose(got.impulse_response(50), want.impulse_response(50), rtol=0, atol=1e-5)


def test_ssm_parameter_groups_partition_parameters():
    model = SSMModel(ModelConfig(d_model=8, n_layers=2, d_state=4))
    ssm, other = model.ssm_parameters(), model.other_parameters()
    assert len(ssm) == 3 * 2  # log_dt, log_A_real, A_imag per layer
    assert len(ssm) + len(other) == len(list(model.parameters()))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="layer"):
        ModelConfig(layer="lstm")
    with pytest.raises(ConfigError, match="layer_d_state"):
        ModelConfig(n_layers=2, layer_d_state=[4])
    with pytest.raises(ConfigError, match="newer edgessm"):
        ModelConfig.from_dict({"d_model": 4, "flux_capacitor": 1})
