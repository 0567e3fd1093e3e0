"""Inverse-Hessian-vector products against independent references.

References: the closed-form Hessian of softmax regression (X^T (diag(p) - p p^T) X / n, per sample, summed via a
Kronecker product), `torch.autograd.functional.hessian`, and a dense float64 solve. Tolerances: exact and CG agree with
the dense closed-form solve to 1e-6 relative; deterministic (full-batch) LiSSA to 1e-5 relative after 3000 steps;
stochastic batch-1 LiSSA (paper's setting, one repeat) within 15% relative error and with Spearman >= 0.95 on the
influence scores of all samples; the measured values are printed (pytest -s).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from hf_influence.grads.hvp import (
    conjugate_gradient_inverse_hvp,
    damped_hessian,
    exact_inverse_hvp,
    flatten_tensors,
    full_data_hvp,
    hvp,
    lissa_inverse_hvp,
    mean_gradient,
    unflatten_vector,
)

N, D, C = 45, 17, 11  # 45 samples, 17 features, 11 classes -> 187 + 11 = 198 parameters in scope


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    weight = (0.3 * torch.randn(C, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    bias = (0.1 * torch.randn(C, generator=g, dtype=torch.float64)).requires_grad_(True)

    def per_sample_loss(idx):
        logits = x[idx] @ weight.T + bias
        return torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")

    def loss_fn(idx):
        return per_sample_loss(idx).mean()

    return x, y, weight, bias, loss_fn, per_sample_loss


def _closed_form_hessian(x, weight, bias):
    """Softmax regression: per-sample Hessian w.r.t. [W (row-major), b] is (diag(p) - p p^T) kron [x; 1][x; 1]^T."""
    with torch.no_grad():
        p = torch.softmax(x @ weight.T + bias, dim=-1)
        hessian = torch.zeros(C * D + C, C * D + C, dtype=torch.float64)
        for i in range(N):
            a = torch.diag(p[i]) - torch.outer(p[i], p[i])
            w_block = torch.kron(a, torch.outer(x[i], x[i]))
            wb_block = torch.kron(a, x[i].unsqueeze(1))  # (C*D, C)
            hessian[: C * D, : C * D] += w_block
            hessian[: C * D, C * D :] += wb_block
            hessian[C * D :, : C * D] += wb_block.T
            hessian[C * D :, C * D :] += a
    return hessian / N


def test_hvp_matches_autograd_functional_hessian_on_mlp():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    x, y = torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 3, (9,))
    params = list(mlp.parameters())
    shapes = [p.shape for p in params]

    def as_function(*flat_params):
        out = torch.func.functional_call(mlp, dict(zip([n for n, _ in mlp.named_parameters()], flat_params)), (x,))
        return torch.nn.functional.cross_entropy(out, y)

    blocks = torch.autograd.functional.hessian(as_function, tuple(p.detach() for p in params))
    sizes = [int(torch.tensor(s).prod()) for s in shapes]
    full = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                      for i in range(len(params))], 0)
    v = torch.randn(sum(sizes), dtype=torch.float64)
    got = hvp(lambda: torch.nn.functional.cross_entropy(mlp(x), y), params, v)
    torch.testing.assert_close(got, full @ v, rtol=1e-10, atol=1e-12)
    # list-shaped v gives a list-shaped answer
    got_list = hvp(lambda: torch.nn.functional.cross_entropy(mlp(x), y), params, unflatten_vector(v, params))
    torch.testing.assert_close(flatten_tensors(got_list), full @ v)


def test_damped_hessian_and_full_data_hvp_match_closed_form():
    x, _, weight, bias, loss_fn, _ = _problem()
    reference = _closed_form_hessian(x, weight, bias)
    # batch 4 does not divide 45: the last partial batch must be weighted by its size
    got = damped_hessian(loss_fn, [weight, bias], N, damping=0.3, batch_size=4, progress=False)
    torch.testing.assert_close(got, reference + 0.3 * torch.eye(reference.shape[0], dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)
    v = torch.randn(reference.shape[0], dtype=torch.float64)
    torch.testing.assert_close(full_data_hvp(loss_fn, [weight, bias], v, N, batch_size=4), reference @ v,
                               rtol=1e-9, atol=1e-12)
    g = mean_gradient(loss_fn, [weight, bias], N, batch_size=4)
    full = flatten_tensors(torch.autograd.grad(loss_fn(list(range(N))), [weight, bias]))
    torch.testing.assert_close(g, full, rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def reference_solution():
    x, _, weight, bias, loss_fn, _ = _problem()
    hessian = _closed_form_hessian(x, weight, bias)
    v = mean_gradient(loss_fn, [weight, bias], N)
    return hessian, v


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_exact_and_cg_match_dense_solve(reference_solution):
    hessian, v = reference_solution
    _, _, weight, bias, loss_fn, _ = _problem()
    eye = torch.eye(hessian.shape[0], dtype=torch.float64)
    target = torch.linalg.solve(hessian + 0.25 * eye, v)
    exact, info = exact_inverse_hvp(loss_fn, [weight, bias], v, N, damping=0.25, batch_size=7, progress=False,
                                    return_info=True)
    assert _rel(exact, target) < 1e-6
    assert info.extra["hessian_min_eigenvalue"] > -1e-8  # softmax regression is convex
    cg, cg_info = conjugate_gradient_inverse_hvp(loss_fn, [weight, bias], v, N, damping=0.25, batch_size=7,
                                                 tol=1e-10, progress=False, return_info=True)
    assert cg_info.converged and cg_info.iterations < hessian.shape[0]
    assert _rel(cg, target) < 1e-6


def test_lissa_full_batch_converges_to_scaled_damped_inverse(reference_solution):
    """Deterministic recursion (batch = all samples): fixed point 25 (H + 0.25 I)^{-1} v, no final /scale."""
    hessian, v = reference_solution
    _, _, weight, bias, loss_fn, _ = _problem()
    target = torch.linalg.solve(hessian + 0.25 * torch.eye(hessian.shape[0], dtype=torch.float64), v)
    got, info = lissa_inverse_hvp(loss_fn, [weight, bias], v, N, depth=3000, batch_size=N, progress=False,
                                  return_info=True)
    assert info.output_factor == 25.0 and info.effective_damping == pytest.approx(0.25)
    assert _rel(got, 25.0 * target) < 1e-5
    assert info.converged
    koh_liang = lissa_inverse_hvp(loss_fn, [weight, bias], v, N, depth=3000, batch_size=N, progress=False,
                                  divide_by_scale=True)
    assert _rel(koh_liang, target) < 1e-5


def test_stochastic_lissa_paper_setting_ranks_like_exact(reference_solution):
    """Batch 1 per step, one repeat, seeded draws: the paper's estimator. Report the error and Spearman."""
    hessian, v = reference_solution
    _, _, weight, bias, loss_fn, per_sample_loss = _problem()
    target = 25.0 * torch.linalg.solve(hessian + 0.25 * torch.eye(hessian.shape[0], dtype=torch.float64), v)
    got = lissa_inverse_hvp(loss_fn, [weight, bias], v, N, depth=2000, batch_size=1, seed=3, progress=False)
    again = lissa_inverse_hvp(loss_fn, [weight, bias], v, N, depth=2000, batch_size=1, seed=3, progress=False)
    torch.testing.assert_close(got, again, rtol=0, atol=0)  # seeded draws are reproducible

    grads = torch.stack([flatten_tensors(torch.autograd.grad(per_sample_loss([i])[0], [weight, bias]))
                         for i in range(N)])
    rho = spearmanr((grads @ got).numpy(), (grads @ target).numpy()).statistic
    rel = _rel(got, target)
    print(f"stochastic LiSSA vs exact: relative error {rel:.3f}, Spearman of influence scores {rho:.4f}")
    assert rel < 0.15
    assert rho >= 0.95


def test_lissa_divergence_is_reported():
    _, _, weight, bias, loss_fn, _ = _problem()
    v = torch.ones(C * D + C, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="increase `scale`"):
        lissa_inverse_hvp(loss_fn, [weight, bias], v, N, scale=0.01, depth=500, batch_size=N, progress=False,
                          log_every=10)


def test_bad_inputs_have_clear_errors():
    _, _, weight, bias, loss_fn, _ = _problem()
    frozen = weight.detach()
    with pytest.raises(ValueError, match="requires_grad"):
        hvp(lambda: loss_fn([0]), [frozen], torch.zeros(frozen.numel(), dtype=torch.float64))
    with pytest.raises(ValueError, match="max_params"):
        exact_inverse_hvp(loss_fn, [weight, bias], torch.zeros(C * D + C, dtype=torch.float64), N, max_params=50)
    with pytest.raises(ValueError, match="scalar"):
        hvp(lambda: torch.stack([loss_fn([0]), loss_fn([1])]), [weight], torch.zeros(C * D, dtype=torch.float64))
