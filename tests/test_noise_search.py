"""zero_order, reno and mean_variance: their update rules against hand-worked cases and torch's own optimisers, and
the loop's accounting of them (compute, acceptance, determinism). References are formulas worked out by hand or
torch's ``SGD``/``Adam``/``clip_grad_norm_``/``kl_divergence``, never the code under test."""

import math

import pytest
import torch

from noise_diffusion import SearchConfig, optimize
from noise_diffusion.errors import UserError
from noise_diffusion.generators import load_generator
from noise_diffusion.generators.base import initial_latents
from noise_diffusion.noise_search import (
    KL_BOUND, MeanVarianceState, clip_per_item, kl_to_prior, mean_variance_step, neighbours, new_mean_variance_state,
    new_momentum_state, norm_regulariser_grad, project_kl, reno_step,
)

from helpers import calibrated_redness

STEPS = 4


@pytest.fixture(scope="module")
def generator(tiny_sd_dir):
    return load_generator(tiny_sd_dir, num_steps=STEPS, guidance_scale=7.5)


@pytest.fixture(scope="module")
def verifier(generator):
    return calibrated_redness(generator)


def run(generator, verifier, seeds=(1,), **config):
    return optimize(generator, verifier, ["a red apple"] * len(seeds), list(seeds), SearchConfig(**config),
                    progress=False)


# ------------------------------------------------------------------------------------------------ zero-order search

def test_neighbours_keep_the_norm_and_have_the_cosine():
    z = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    found = neighbours(z, 0.95, 6, torch.Generator().manual_seed(1))
    assert found.shape == (6, 4, 8, 8)
    flat, pivot = found.reshape(6, -1), z.reshape(-1)
    torch.testing.assert_close(flat.norm(dim=1), pivot.norm().expand(6), rtol=1e-12, atol=0)
    cosines = flat @ pivot / (flat.norm(dim=1) * pivot.norm())
    torch.testing.assert_close(cosines, torch.full((6,), 0.95, dtype=torch.float64), rtol=0, atol=1e-12)
    # the neighbours differ from one another (each has its own orthogonal direction)
    assert (flat[0] - flat[1]).norm() > 0.1 * pivot.norm()


def test_neighbours_of_a_gaussian_are_gaussian():
    """A neighbour of a standard-normal pivot is standard normal: mean 0, variance 1, no excess kurtosis."""
    z = torch.randn(20000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = neighbours(z, 0.95, 1, torch.Generator().manual_seed(3))[0]
    residual = y - 0.95 * z  # the part the neighbour does not share with the pivot
    assert abs(float(y.mean())) < 4 / math.sqrt(20000)
    assert float(y.var()) == pytest.approx(1.0, abs=0.03)
    assert float(((y - y.mean()) ** 4).mean() / y.var() ** 2) == pytest.approx(3.0, abs=0.15)
    assert float(residual @ z) == pytest.approx(0.0, abs=1e-6 * float(z @ z))


def test_zero_order_compute_and_pivot_rule(generator, verifier):
    epochs, count = 3, 3
    (result,) = run(generator, verifier, method="zero_order", max_epoch=epochs, num_candidates=count)
    generations = 1 + epochs * count  # the pivot once, then N neighbours per epoch
    assert result.compute.generations == generations
    assert result.compute.model_evals == generations * 2 * STEPS
    assert result.compute.verifier_forward == generations
    assert result.compute.verifier_backward == result.compute.model_backwards == 0
    pivot = result.epochs[0].score
    for record in result.epochs[1:]:
        assert 0 <= record["candidate"] < count
        assert record.accepted == (record.score > pivot)  # the pivot moves only to a better neighbour
        pivot = max(pivot, record.score)
    assert result.best_score == pivot
    z0 = initial_latents(generator.latent_shape, [1])[0]
    # every neighbour keeps the pivot's norm, so the whole chain stays on the sphere of the initial latent
    assert float(result.best_latent.norm()) == pytest.approx(float(z0.norm()), rel=1e-5)


def test_zero_order_default_neighbours_are_tt_scale_flux():
    config = SearchConfig(method="zero_order").validate()
    assert config.candidates == 4 and config.neighbour_cosine == 0.95 and config.accept_rule == "improved"
    assert config.record()["gradient"] is None
    with pytest.raises(UserError, match="neighbour_cosine"):
        SearchConfig(method="zero_order", neighbour_cosine=1.0).validate()


# ------------------------------------------------------------------------------------------------------------- ReNO

def test_norm_regulariser_gradient_by_hand():
    # z = (3, 4): ‖z‖ = 5, D = 2: 0.01·(z − (D−1)·z/‖z‖²) = 0.01·((3, 4) − (0.12, 0.16))
    grad = norm_regulariser_grad(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[0.0288, 0.0384]], dtype=torch.float64), rtol=1e-12, atol=0)


def test_clipping_is_torchs_clip_grad_norm():
    grads = torch.tensor([[3.0, 4.0], [0.03, 0.04]], dtype=torch.float64)
    clipped, norms = clip_per_item(grads, 0.1)
    assert norms == pytest.approx([5.0, 0.05])
    for row, got in zip(grads, clipped):
        param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        param.grad = row.clone()
        torch.nn.utils.clip_grad_norm_([param], 0.1)
        torch.testing.assert_close(got, param.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(clipped[0], torch.tensor([0.06, 0.08], dtype=torch.float64), rtol=1e-6, atol=0)


def test_reno_steps_are_torchs_nesterov_sgd_on_the_clipped_loss():
    """Three steps from one latent with given score gradients, against torch.optim.SGD(lr 5, momentum 0.9, nesterov)
    on ``−s + 0.01·(½‖z‖² − (D−1)·log‖z‖)`` with ``clip_grad_norm_(0.1)``."""
    rng = torch.Generator().manual_seed(4)
    z = torch.randn(1, 2, 3, 3, generator=rng, dtype=torch.float64)
    score_grads = [torch.randn(1, 2, 3, 3, generator=rng, dtype=torch.float64) * s for s in (0.01, 1.0, 0.001)]
    param = torch.nn.Parameter(z.clone())
    sgd = torch.optim.SGD([param], lr=5.0, momentum=0.9, nesterov=True)
    states, ours = [new_momentum_state(z[0])], z.clone()
    for g in score_grads:
        sgd.zero_grad()
        norm = param.norm()
        loss = -(param * g).sum() + 0.01 * (0.5 * norm**2 - (param.numel() - 1) * torch.log(norm))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([param], 0.1)
        sgd.step()
        ours, _ = reno_step(ours, g, None, None, {}, states)
        torch.testing.assert_close(ours, param.detach(), rtol=1e-5, atol=1e-6)


def test_reno_defaults_to_the_exact_gradient_and_counts_backwards(generator, verifier):
    config = SearchConfig(method="reno").validate()
    assert config.gradient_used == "exact" and config.record()["gradient"] == "exact"
    assert SearchConfig(method="reno", gradient="replay").gradient_used == "replay"
    assert SearchConfig().gradient_used == "replay"
    (result,) = run(generator, verifier, method="reno", max_epoch=2)
    # ReNO's n_iters = max_epoch + 1 forwards, the last without a backward
    assert result.compute.generations == 3 and result.compute.verifier_backward == 2
    assert result.compute.model_backwards == 2 * 2 * STEPS
    assert all("gradient_cosine" in e.info for e in result.epochs[:-1])
    assert result.best_score == max(e.score for e in result.epochs)


# -------------------------------------------------------------------------------------------------- mean–variance

def test_mean_variance_first_step_by_hand():
    """Adam's first step is lr·ĝ/(|ĝ| + eps) per element (m̂ = g, v̂ = g²), lr 1e-2, eps 1e-3, on the loss −s:
    μ gets −(−g), ℓ gets the chain rule −g·z·½ (at ℓ = 0)."""
    z = torch.tensor([[1.0, -2.0, 0.5]])
    g = torch.tensor([[0.01, -0.002, 0.0001]])
    state = new_mean_variance_state(z[0])
    got, infos = mean_variance_step(z, g, None, None, {}, [state])
    mean = [0.01 * 0.01 / (0.01 + 1e-3), 0.01 * -0.002 / (0.002 + 1e-3), 0.01 * 0.0001 / (0.0001 + 1e-3)]
    dl = [0.005, 0.002, 0.000025]  # g·z/2
    log_var = [0.01 * d / (abs(d) + 1e-3) for d in dl]
    want = [zi * math.exp(0.5 * lv) + m for zi, lv, m in zip([1.0, -2.0, 0.5], log_var, mean)]
    torch.testing.assert_close(state.mean, torch.tensor(mean), rtol=1e-5, atol=0)
    torch.testing.assert_close(state.log_var, torch.tensor(log_var), rtol=1e-5, atol=0)
    torch.testing.assert_close(got, torch.tensor([want]), rtol=1e-6, atol=0)
    assert infos[0]["kl_steps"] == 0  # a first step of about lr per element stays far below the KL bound


def test_mean_variance_steps_are_torchs_adam():
    rng = torch.Generator().manual_seed(5)
    z = torch.randn(1, 16, generator=rng)
    mean, log_var = torch.zeros(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    adam = torch.optim.Adam([mean, log_var], lr=1e-2, eps=1e-3)
    state, latent = new_mean_variance_state(z[0]), z
    for _ in range(3):
        g = torch.randn(1, 16, generator=rng) * 0.01
        adam.zero_grad()
        (-(g[0] * (z[0] * torch.exp(0.5 * log_var) + mean)).sum()).backward()
        adam.step()
        latent, _ = mean_variance_step(latent, g, None, None, {}, [state])
    torch.testing.assert_close(state.mean, mean.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(state.log_var, log_var.detach(), rtol=1e-5, atol=1e-7)


def test_kl_is_the_gaussian_kl_and_projection_meets_the_bound():
    mean, log_var = torch.full((64,), 0.2), torch.full((64,), -0.3)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * log_var).exp()),
                                             torch.distributions.Normal(0.0, 1.0)).mean()
    assert kl_to_prior(mean, log_var) == pytest.approx(float(want), rel=1e-6)
    zero = torch.zeros(64)
    state = MeanVarianceState(torch.ones(64), mean.clone(), log_var.clone(), [zero.clone() for _ in range(4)])
    steps = project_kl(state)
    assert 0 < steps and kl_to_prior(state.mean, state.log_var) <= KL_BOUND


# ------------------------------------------------------------------------------------------------ the loop, per seed

@pytest.mark.parametrize("method", ["zero_order", "reno", "mean_variance"])
def test_deterministic_per_seed(generator, verifier, method):
    first, again, other = (run(generator, verifier, seeds=(s,), method=method, max_epoch=2, num_candidates=2)[0]
                           for s in (7, 7, 8))
    assert [e.score for e in first.epochs] == [e.score for e in again.epochs]
    torch.testing.assert_close(first.best_latent, again.best_latent, rtol=0, atol=0)
    assert [e.score for e in first.epochs] != [e.score for e in other.epochs]


def test_mean_variance_compute_and_reparametrisation(generator, verifier):
    (result,) = run(generator, verifier, method="mean_variance", max_epoch=2)
    assert result.compute.generations == 3 and result.compute.verifier_backward == 2
    assert result.compute.model_backwards == 0  # the replay gradient by default
    for record in result.epochs[1:]:
        assert record["kl"] <= KL_BOUND or record["kl_steps"] == 1000
