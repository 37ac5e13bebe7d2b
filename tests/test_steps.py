"""Step functions against hand-computed Gaussian transitions."""

import math

import pytest
import torch

from samplers import ddim_step, ddpm_step, flow_step, gaussian_log_prob
from samplers.noise import generators_from_seeds


def normal_log_prob(sample, mean, std):
    return torch.distributions.Normal(mean.double(), std).log_prob(sample.double()).flatten(1).sum(1)


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, sample = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor([0.5, 1.0, 2.0])
    ours = gaussian_log_prob(sample, mean, std)
    expected = torch.stack(
        [normal_log_prob(sample[i : i + 1], mean[i : i + 1], float(std[i]))[0] for i in range(3)]
    )
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-3)


def test_gaussian_log_prob_is_zero_for_deterministic_rows():
    mean = torch.zeros(2, 3)
    out = gaussian_log_prob(torch.ones(2, 3), mean, torch.tensor([0.0, 1.0]))
    assert out[0] == 0
    assert out[1] == pytest.approx(-3 * 0.5 - 1.5 * math.log(2 * math.pi), rel=1e-6)


def test_flow_ode_step_is_euler_bit_for_bit():
    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sigma, sigma_next = torch.tensor(0.8), torch.tensor(0.6)  # float32, as scheduler tables are
    out = flow_step(v, x, sigma, sigma_next, noise_level=0.0)
    assert torch.equal(out.sample, x + (sigma_next - sigma) * v)
    assert torch.equal(out.std, torch.zeros(2)) and torch.equal(out.log_prob, torch.zeros(2))


def test_flow_sde_step_mean_std_and_log_prob_by_hand():
    torch.manual_seed(1)
    x, v = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    sigma, sigma_next, a = 0.7, 0.5, 0.8
    dt = sigma_next - sigma
    s = a * math.sqrt(sigma / (1 - sigma))
    mean = x * (1 + s**2 * dt / (2 * sigma)) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std = s * math.sqrt(-dt)
    prev = mean + 0.3
    out = flow_step(v, x, sigma, sigma_next, noise_level=a, prev=prev)
    torch.testing.assert_close(out.mean, mean, rtol=1e-5, atol=1e-6)
    assert float(out.std[0]) == pytest.approx(std, rel=1e-6)
    expected = normal_log_prob(prev, mean, std)
    assert float(out.log_prob[0]) == pytest.approx(float(expected[0]), rel=1e-5)
    assert torch.equal(out.sample, prev)


def test_flow_sde_at_sigma_one_uses_next_sigma_in_the_denominator():
    x, v = torch.zeros(1, 2), torch.ones(1, 2)
    out = flow_step(v, x, 1.0, 0.9, noise_level=0.5)
    assert float(out.std[0]) == pytest.approx(0.5 * math.sqrt(1 / 0.1) * math.sqrt(0.1), rel=1e-6)


def test_flow_sde_draw_has_the_stated_std():
    x, v = torch.zeros(1, 4, 64, 64), torch.zeros(1, 4, 64, 64)
    out = flow_step(v, x, 0.5, 0.4, noise_level=0.7, generator=generators_from_seeds([0]))
    empirical = float((out.sample - out.mean).std())
    assert empirical == pytest.approx(float(out.std[0]), rel=0.03)


def test_steps_are_batched_over_per_sample_sigmas():
    torch.manual_seed(2)
    x, out = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    sigmas, nexts = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.3, 0.0])
    batched = flow_step(out, x, sigmas, nexts, noise_level=0.6, prev=x * 0.9)
    for i in range(3):
        single = flow_step(
            out[i : i + 1],
            x[i : i + 1],
            float(sigmas[i]),
            float(nexts[i]),
            noise_level=0.6,
            prev=x[i : i + 1] * 0.9,
        )
        torch.testing.assert_close(batched.mean[i : i + 1], single.mean)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_zero_by_hand(prediction_type):
    torch.manual_seed(3)
    x, out = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    abar, abar_next = 0.3, 0.6
    sigma, sigma_next = math.sqrt(1 - abar), math.sqrt(1 - abar_next)
    if prediction_type == "epsilon":
        x0 = (x - sigma * out) / math.sqrt(abar)
        eps = out
    else:
        x0 = math.sqrt(abar) * x - sigma * out
        eps = math.sqrt(abar) * out + sigma * x
    expected = math.sqrt(abar_next) * x0 + math.sqrt(1 - abar_next) * eps
    step = ddim_step(out, x, sigma, sigma_next, noise_level=0.0, prediction_type=prediction_type)
    torch.testing.assert_close(step.sample, expected, rtol=1e-5, atol=1e-5)


def test_ddim_with_eta_has_ddim_variance_and_log_prob():
    torch.manual_seed(4)
    x, out = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    abar, abar_next, eta = 0.3, 0.6, 0.7
    variance = (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)
    std = eta * math.sqrt(variance)
    x0 = (x - math.sqrt(1 - abar) * out) / math.sqrt(abar)
    mean = math.sqrt(abar_next) * x0 + math.sqrt(1 - abar_next - std**2) * out
    prev = mean - 0.2
    step = ddim_step(out, x, math.sqrt(1 - abar), math.sqrt(1 - abar_next), noise_level=eta, prev=prev)
    torch.testing.assert_close(step.mean, mean, rtol=1e-5, atol=1e-5)
    assert float(step.std[0]) == pytest.approx(std, rel=1e-6)
    assert float(step.log_prob[0]) == pytest.approx(float(normal_log_prob(prev, mean, std)[0]), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_posterior_equals_ddim_at_eta_one(prediction_type):
    torch.manual_seed(5)
    x, out = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    sigma, sigma_next = torch.tensor([0.9, 0.7]), torch.tensor([0.8, 0.4])
    prev = torch.randn(2, 4, 4, 4)
    a = ddim_step(out, x, sigma, sigma_next, noise_level=1.0, prev=prev, prediction_type=prediction_type)
    b = ddpm_step(out, x, sigma, sigma_next, noise_level=1.0, prev=prev, prediction_type=prediction_type)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.std, b.std)
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=1e-5, atol=1e-3)


def test_ddpm_fixed_large_uses_beta():
    x, out = torch.zeros(1, 2), torch.zeros(1, 2)
    abar, abar_next = 0.5, 0.8
    step = ddpm_step(
        out,
        x,
        math.sqrt(1 - abar),
        math.sqrt(1 - abar_next),
        variance_type="fixed_large",
        prev=torch.zeros(1, 2),
    )
    assert float(step.std[0]) == pytest.approx(math.sqrt(1 - abar / abar_next), rel=1e-6)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.5, 0.4, prediction_type="sample")


def test_step_math_is_float32_for_half_inputs():
    x, out = torch.randn(1, 4, dtype=torch.bfloat16), torch.randn(1, 4, dtype=torch.bfloat16)
    step = flow_step(out, x, 0.5, 0.4, noise_level=0.5, generator=generators_from_seeds([0]))
    assert step.sample.dtype == torch.float32 and step.log_prob.dtype == torch.float32


def point_mass_state(sigma: float, n: int = 4096, d: int = 8, seed: int = 0):
    """x_sigma for data that is a point mass at 0, and the exact velocity there (v = eps = x / sigma)."""
    x = sigma * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x, x / sigma


@pytest.mark.parametrize("sigma, sigma_next", [(0.9, 0.6), (0.5, 0.4), (0.2, 0.1)])
def test_cps_step_keeps_the_schedules_noise_where_the_sde_step_overshoots(sigma, sigma_next):
    from samplers.flow import cps_step

    x, v = point_mass_state(sigma)
    se = sigma_next / math.sqrt(2 * x.numel())  # the SE of a std estimated from n d normal draws
    for level in (0.3, 0.7, 1.0):
        cps = cps_step(v, x, sigma, sigma_next, noise_level=level, generator=torch.Generator().manual_seed(1))
        assert abs(float(cps.sample.std()) - sigma_next) < 4 * se, level


def test_the_sde_step_overshoots_at_high_noise_where_cps_does_not():
    """Flow-GRPO's step at sigma 0.9 -> 0.6 and noise level 0.7 (the demo's): its drift and noise were
    derived in continuous time, and over one coarse step they leave x with std 1.16 (by hand: drift
    -0.15 x, noise 2.1 sqrt(0.3)) where the schedule says 0.6; CPS leaves 0.6."""
    from samplers.flow import cps_step

    x, v = point_mass_state(0.9)
    sde = flow_step(v, x, 0.9, 0.6, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    assert float(sde.sample.std()) == pytest.approx(math.sqrt((0.15 * 0.9) ** 2 + 2.1**2 * 0.3), rel=0.02)
    cps = cps_step(v, x, 0.9, 0.6, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    assert float(cps.sample.std()) == pytest.approx(0.6, rel=0.02)


def test_cps_step_at_level_zero_is_euler_and_rescores_its_own_draws():
    from samplers.flow import cps_step

    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ode = cps_step(v, x, 0.8, 0.6, noise_level=0.0)
    torch.testing.assert_close(ode.sample, x + (0.6 - 0.8) * v)
    assert torch.equal(ode.log_prob, torch.zeros(2))
    out = cps_step(v, x, 0.8, 0.6, noise_level=0.7, generator=generators_from_seeds([0, 1]))
    std = 0.6 * math.sin(0.7 * math.pi / 2)
    assert torch.allclose(out.std, torch.full((2,), std))
    again = cps_step(v, x, 0.8, 0.6, noise_level=0.7, prev=out.sample)
    assert torch.equal(again.log_prob, out.log_prob)
    torch.testing.assert_close(out.log_prob.double(), normal_log_prob(out.sample, out.mean, std), rtol=1e-5, atol=1e-3)
