"""Independent reference computations for the tests of RGW, PCGrad, CAGrad, MGDA, IMTL-G, UW, DWA, FAMO.

Each reference solves the method's defining problem by a different route than the aggregator (a
generic convex solver, the paper's closed form, plain autograd with ``torch.optim.Adam``), written
from the papers' equations, so that agreement checks the aggregator rather than restating it.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import torch
from scipy.optimize import minimize


def random_matrix(k: int, n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """A ``[k, n]`` Gaussian matrix; ``shift`` adds a common component (less conflict between rows)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((k, n)) + shift


# ------------------------------------------------------------------------------------------- MGDA
def min_norm_qp(K: np.ndarray) -> tuple[np.ndarray, float]:
    """``min wᵀKw`` over the simplex with cvxpy (CLARABEL); returns ``(w, wᵀKw)``."""
    k = K.shape[0]
    K = 0.5 * (K + K.T) + 1e-14 * np.trace(K) * np.eye(k)  # PSD to the solver's taste
    w = cp.Variable(k)
    problem = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(K))), [w >= 0, cp.sum(w) == 1])
    problem.solve(cp.CLARABEL)
    return np.asarray(w.value), float(problem.value)


def min_norm_two(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """Closed form on the segment: ``argmin_γ ‖γ g1 + (1 − γ) g2‖``, clipped to [0, 1]."""
    difference = g1 - g2
    denominator = float(difference @ difference)
    gamma = 0.5 if denominator == 0 else float(np.clip(-(g2 @ difference) / denominator, 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


# ----------------------------------------------------------------------------------------- CAGrad
def cagrad_primal(G: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """CAGrad's primal, ``max_d min_i ⟨g_i, d⟩ s.t. ‖d − g_0‖ ≤ c‖g_0‖``, with cvxpy; ``(d, value)``."""
    k, n = G.shape
    g0 = G.mean(axis=0)
    d = cp.Variable(n)
    t = cp.Variable()
    problem = cp.Problem(cp.Maximize(t), [G @ d >= t, cp.norm(d - g0) <= c * np.linalg.norm(g0)])
    problem.solve(cp.CLARABEL)
    return np.asarray(d.value), float(problem.value)


def cagrad_dual_objective(G: np.ndarray, w: np.ndarray, c: float) -> float:
    """``F(w) = ⟨g_w, g_0⟩ + c‖g_0‖ ‖g_w‖`` (the dual CAGrad minimises over the simplex)."""
    g0 = G.mean(axis=0)
    gw = w @ G
    return float(gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw))


def cagrad_slsqp(G: np.ndarray, c: float, rescale: int) -> np.ndarray:
    """The CAGrad direction the way the authors compute it: SLSQP on the dual over the simplex, from
    the uniform start, with ``+1e-8`` inside the square root, then ``g_0 + λ g_w`` and the rescaling."""
    k = G.shape[0]
    K = G @ G.T
    b = np.full(k, 1.0 / k)
    sqrt_phi = c * np.sqrt(b @ K @ b + 1e-8)

    def objective(x: np.ndarray) -> float:
        return float(x @ K @ b + sqrt_phi * np.sqrt(x @ K @ x + 1e-8))

    result = minimize(objective, b.copy(), bounds=[(0.0, 1.0)] * k, method="SLSQP",
                      constraints={"type": "eq", "fun": lambda x: 1.0 - x.sum()})
    gw = result.x @ G
    direction = G.mean(axis=0) + sqrt_phi / (np.linalg.norm(gw) + 1e-8) * gw
    return direction / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


# ----------------------------------------------------------------------------------------- IMTL-G
def imtlg_closed_form(G: np.ndarray) -> np.ndarray:
    """IMTL-G paper's closed form: ``α_{2:k} = g_1 Uᵀ (D Uᵀ)⁻¹``, ``α_1 = 1 − Σ α_{2:k}``, with rows
    ``D_i = g_1 − g_i`` and ``U_i = u_1 − u_i`` (``u = g/‖g‖``), ``i = 2..k``."""
    units = G / np.linalg.norm(G, axis=1, keepdims=True)
    D = G[0] - G[1:]
    U = units[0] - units[1:]
    rest = (G[0] @ U.T) @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


# -------------------------------------------------------------------------------------------- PCGrad
def pcgrad_vectors(G: np.ndarray, orders: list[list[int]]) -> list[np.ndarray]:
    """Paper's Algorithm 1 on the gradient vectors themselves: the projected ``g_i^PC`` for each task,
    projecting on the original ``g_j`` in ``orders[i]`` (which may contain ``i``, skipped)."""
    projected = []
    for i, order in enumerate(orders):
        g = G[i].copy()
        for j in order:
            if j == i:
                continue
            inner = float(g @ G[j])
            if inner < 0:
                g = g - inner / float(G[j] @ G[j]) * G[j]
        projected.append(g)
    return projected


# ------------------------------------------------------------------------------------ UW and FAMO
class UncertaintyReference:
    """Kendall et al.'s regression objective as the baselines' code writes it, ``Σ ½(e^{−s}L + s)``,
    with ``s`` a leaf tensor trained by ``torch.optim.Adam``; the loss weights are the gradient of
    that objective with respect to the losses."""

    def __init__(self, k: int, lr: float) -> None:
        self.log_var = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.log_var], lr=lr)

    def step(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.detach().clone().requires_grad_(True)
        objective = (0.5 * (torch.exp(-self.log_var) * losses + self.log_var)).sum()
        self.optimizer.zero_grad()
        weights, = torch.autograd.grad(objective, losses, retain_graph=True)
        objective.backward()
        self.optimizer.step()
        return weights


class FAMOReference:
    """FAMO (Liu et al. 2023, Algorithm 1) with autograd: the model descends
    ``Σ_i z_i log(L_i − m_i + ε) / c`` (``c = Σ z_i/(L_i − m_i + ε)`` held fixed); after the step the logits
    take a ``torch.optim.Adam`` step (L2 weight decay) along ``∂z/∂ξ`` contracted with the log-loss
    decrease."""

    def __init__(self, k: int, lr: float, weight_decay: float, min_losses: float = 0.0, eps: float = 1e-8):
        self.logits = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=weight_decay)
        self.min_losses = min_losses
        self.eps = eps
        self.previous: torch.Tensor | None = None

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """Gradient of the log-loss objective with respect to the plain losses."""
        losses = losses.detach().clone().requires_grad_(True)
        z = torch.softmax(self.logits.detach(), dim=0)
        gaps = losses - self.min_losses + self.eps
        c = (z / gaps).sum().detach()
        objective = (z * gaps.log() / c).sum()
        self.previous = losses.detach()
        return torch.autograd.grad(objective, losses)[0]

    def update(self, new_losses: torch.Tensor) -> None:
        delta = (self.previous - self.min_losses + self.eps).log() - (new_losses - self.min_losses + self.eps).log()
        z = torch.softmax(self.logits, dim=0)
        self.optimizer.zero_grad()
        self.logits.grad = torch.autograd.grad(z, self.logits, grad_outputs=delta)[0]
        self.optimizer.step()


# -------------------------------------------------------------------------------------------- DWA
def dwa_by_hand(newer_mean: np.ndarray, older_mean: np.ndarray, temperature: float) -> np.ndarray:
    """MTAN's DWA for one step, ``K exp(r/T) / Σ exp(r/T)`` with ``r = newer/older``, divided by ``K``."""
    ratio = newer_mean / older_mean
    exponentials = np.exp(ratio / temperature)
    return exponentials / exponentials.sum()
