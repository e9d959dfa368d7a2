"""Uncertainty weighting (UW)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.aggregation._base import Aggregator, TaskStats, check_choice, check_positive, register
from mtrl.aggregation._linalg import adam_step_, as_state_tensor, lowered_floor

#: The log-variances are kept in [-LOG_VAR_BOUND, LOG_VAR_BOUND] so that the weights stay finite.
LOG_VAR_BOUND = 30.0


@register("uw")
class UW(Aggregator):
    """Homoscedastic-uncertainty weighting: losses weighted by learned inverse variances.

    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
    and Semantics", CVPR 2018: the regression form ``L/(2σ²) + log σ`` of their objective, as the code
    the baselines are usually run with writes it (Nash-MTL's and FAMO's ``Uncertainty``/``uw.py``,
    the MTAN/CAGrad trainers): with learned ``s_i = log σ_i²``,

        ``L(θ, s) = Σ_i ½ (e^{−s_i} L_i(θ) + s_i)``,

    minimised jointly in θ and ``s``. As an aggregator: the returned loss weights are
    ``w_i = ½ e^{−s_i}`` (÷ ``k`` for ``reduction="mean"``), and the aggregator owns ``s`` and takes
    its Adam step itself, inside the call, with the gradient ``∂L/∂s_i = ½ (1 − e^{−s_i} L_i)`` at the
    same ``s`` the weights came from and the losses in ``stats.losses``. That is exactly the joint
    step (Adam treats every parameter separately), so no ``after_step`` is needed; each call is one
    training step. At the optimum ``σ_i² = L_i``: ``w_i → 1/(2 L_i)``.

    Args:
        lr: Adam learning rate of ``s``. Default 0.025: Nash-MTL's ``--method-params-lr``
            ("lr for weight method params ... for uncertainty weighting") and ``w_lr`` of the FAMO
            authors' MT10 ``uw.py``. Adam's other settings are torch's defaults, as there.
        init_log_var: initial ``s_i`` (default 0, as in that code: ``w_i = ½`` at the start).
        reduction: ``"mean"`` (default: the objective divided by ``k``, on the scale of LS) or
            ``"sum"`` (the authors' objective).

    .. note:: ``reduction="mean"`` rescales only the weights handed to the model; ``s`` always
       follows the gradient of the authors' sum objective (with Adam the two differ only through eps).
       At initialisation the mean-scale weights sum to ½ (the ½ of ``L/(2σ²)``).
    .. note:: Negative or zero losses. The method assumes positive losses: as ``L_i → 0`` the optimum
       ``s_i = log L_i → −∞``, and for ``L_i < 0`` the objective is unbounded below in ``s_i`` (the FAMO
       authors' MT10 code applies UW to SAC actor losses, which are usually negative, anyway). Here
       ``s`` follows the losses above a per-task floor, ``L_i − f_i``: the floor starts at 0 (positive
       losses: the authors' method, unchanged) and, whenever a loss is at or below it, drops to
       ``L − (|L| + 1)`` (:func:`~mtrl.aggregation._linalg.lowered_floor`), so ``L_i − f_i ≥ 1`` at
       that step and the optimum ``σ_i² = L_i − f_i`` stays finite. ``s`` is also clipped to
       ``[−30, 30]`` so the weights stay finite whatever happens (at most ``½ e^30 ≈ 5·10¹²``).
    .. note:: The state (``s``, Adam moments, the floor) is sized on the first call; it lives on the
       device of the losses in float64, the Adam step count too (a 0-dim tensor), all updated in
       place (no host read; the state can live in a CUDA graph), and round-trips through
       ``state_dict``. A different number of tasks later is an error.
    """

    needs_jacobian = False
    loss_weighting = True
    _state_attributes = ("log_var", "exp_avg", "exp_avg_sq", "adam_steps", "loss_floor")
    _added_state_attributes = ("loss_floor",)

    def __init__(self, lr: float = 0.025, init_log_var: float = 0.0, reduction: str = "mean") -> None:
        self.lr = check_positive("lr", lr)
        if isinstance(init_log_var, bool) or not isinstance(init_log_var, (int, float)) or \
                not -LOG_VAR_BOUND <= init_log_var <= LOG_VAR_BOUND:
            raise ValueError(
                f"Parameter `init_log_var` should be a number in [-{LOG_VAR_BOUND}, {LOG_VAR_BOUND}]. "
                f"Found `init_log_var = {init_log_var!r}`."
            )
        self.init_log_var = init_log_var
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        super().__init__()

    def _init_state(self) -> None:
        self.log_var: Tensor | None = None
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None
        self.adam_steps = 0
        self.loss_floor: Tensor | None = None

    def _weights(self, jacobian: Tensor | None, stats: TaskStats) -> Tensor:
        k = stats.num_tasks
        losses = stats.losses.detach().to(torch.float64)
        if self.log_var is not None and self.log_var.shape[0] != k:
            raise ValueError(f"uw was set up for {self.log_var.shape[0]} tasks but got losses for {k} tasks.")
        self.log_var = as_state_tensor(self.log_var, losses, fill=float(self.init_log_var))
        self.exp_avg = as_state_tensor(self.exp_avg, losses)
        self.exp_avg_sq = as_state_tensor(self.exp_avg_sq, losses)
        self.adam_steps = as_state_tensor(self.adam_steps, losses)
        self.loss_floor = as_state_tensor(self.loss_floor, losses)
        self.loss_floor.copy_(lowered_floor(self.loss_floor, losses))
        precision = torch.exp(-self.log_var)
        weights = 0.5 * precision / (k if self.reduction == "mean" else 1)
        grad = 0.5 * (1.0 - precision * (losses - self.loss_floor))
        adam_step_(self.log_var, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.lr)
        self.log_var.clamp_(-LOG_VAR_BOUND, LOG_VAR_BOUND)
        return weights.to(dtype=stats.losses.dtype)
