"""``SpectralMoELinear``: a drop-in ``nn.Linear`` whose experts rescale its spectrum.

The specification and the fast path are in :mod:`eigenmix.moe.functional`. Choices the
specification leaves open (see also ``docs`` in the README):

- **Initialisation that keeps a pretrained layer** (:meth:`SpectralMoELinear.from_linear`):
  ``s = 1`` makes every ``y_e = y_lin`` (spectral mode: ``U diag(σ) Vᵀ + W_res = W``), so
  ``out = y_lin · (1 − ρ (1 − mean_e g_e))``. The gate bias starts at ``GATE_BIAS_INIT``
  (9: ``1 − sigmoid(9) = 1.2e-4``) and ``G`` near 0, so ``mean g ≈ 1`` and each layer's
  output stays within ~1e-4 relative of the original (a 36-layer encoder within ~1e-3);
  the router starts at ``R = 0``, bias 0 (``ρ = 0.5``), so the scales ``s`` get full
  gradients from the first step. The saturated gate learns with small raw gradients,
  which Adam's per-parameter normalisation compensates. ``G`` starts
  at ``N(0, (0.01 / √m)²)`` rather than 0: with identical gates all experts would get
  identical gradients and never differentiate.
- Gate and router have biases (``G``: ``(E,)``, ``R``: ``(1,)`` or ``(m,)``).
- ``W``, ``b``, ``σ`` are frozen; ``U`` and ``V`` are frozen unless ``train_bases``.
  When they train, the remainder ``W_res`` is kept as its own frozen buffer (one more
  dense product per token): the fast path's shortcut ``x W_resᵀ = x Wᵀ − x V σ Uᵀ`` holds
  only for the original ``U``, ``V``.
- ``rank=None`` keeps every singular direction (``k = min(m, n)``, ``W_res = 0``).
- **The scales train at ``scales_lr_ratio`` (30) times the rest's learning rate**
  (:func:`eigenmix.moe.param_groups` builds the optimiser's groups). Adam moves every
  parameter by about ``lr`` per step whatever its gradient's size, and a scale starts at
  1: at a LoRA learning rate (2e-3, 100 steps with warm-up and decay) the scales of
  all-MiniLM-L6-v2 moved by 0.02 on average (largest 0.09), so the spectrum hardly
  changed while LoRA's ``B`` grows from 0. At 30× they move by ~0.3 and per-task accuracy
  reaches LoRA's (emotion, 200 test rows: 65.0 → 78.5 against LoRA's 81.5; 100× overshoots,
  SVF 59.5). The gate and router stay at ``lr``.
- The last gate and router values are kept (detached) in ``last_gate`` / ``last_router``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from eigenmix.errors import InvalidInputError
from eigenmix.moe.functional import Mode, MoEParams, fast_forward, naive_forward

GATE_BIAS_INIT = 9.0
SCALES_LR_RATIO = 30.0


class SpectralMoELinear(nn.Module):
    """A linear layer ``(…, in_features) → (…, out_features)`` with a spectral mixture of experts.

    Args:
        in_features: n.
        out_features: m.
        n_experts: E ≥ 1.
        rank: k, the singular directions the experts rescale (default ``min(m, n)``).
        router: ``"token"`` (``R`` is ``(n, 1)``: one mixing weight per token) or
            ``"feature"`` (``(n, m)``: one per output feature).
        mode: ``"spectral"`` (``s`` is ``(E, k)``, scales singular values) or
            ``"output"`` (``s`` is ``(E, m)``, scales ``y_lin``).
        bias: whether the frozen linear has a bias.
        gate: whether to use the gate and router (False: ``out = ȳ`` with ``g = 1``, the
            SVF case of Transformer² when E = 1).

    A fresh layer has random ``W`` (``nn.Linear``'s init) and its SVD (``spectrum=False``
    skips that SVD, for a caller that sets the weight next); use :meth:`from_linear` to
    wrap a pretrained one. Train it with :func:`eigenmix.moe.param_groups` (the scales at
    ``scales_lr_ratio`` times the learning rate; see the module docstring).
    """

    scales_lr_ratio: float = SCALES_LR_RATIO
    """The scales' learning rate over the other parameters' (:func:`eigenmix.moe.param_groups`)."""
    sigma: Tensor
    residual: Tensor | None
    bias: nn.Parameter | None
    gate: nn.Parameter | None
    gate_bias: nn.Parameter | None
    router: nn.Parameter | None
    router_bias: nn.Parameter | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_experts: int,
        rank: int | None = None,
        router: str = "token",
        mode: Mode = "spectral",
        bias: bool = True,
        gate: bool = True,
        *,
        dtype: torch.dtype | None = None,
        spectrum: bool = True,
    ) -> None:
        super().__init__()
        _check(in_features, out_features, n_experts, rank, router, mode)
        self.in_features, self.out_features, self.n_experts = in_features, out_features, n_experts
        self.rank = min(in_features, out_features) if rank is None else rank
        self.router_kind, self.mode, self.use_gate = router, mode, gate
        m, n, k, E = out_features, in_features, self.rank, n_experts
        linear = nn.Linear(n, m, bias=bias, dtype=dtype)
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)  # (m, n)
        self.bias = nn.Parameter(linear.bias.detach(), requires_grad=False) if bias else None
        self.U = nn.Parameter(torch.zeros(m, k, dtype=dtype), requires_grad=False)
        self.V = nn.Parameter(torch.zeros(n, k, dtype=dtype), requires_grad=False)
        self.register_buffer("sigma", torch.zeros(k, dtype=dtype))
        self.register_buffer("residual", None)
        self.scales = nn.Parameter(torch.ones(E, k if mode == "spectral" else m, dtype=dtype))
        width = 1 if router == "token" else m
        self.gate = nn.Parameter(torch.randn(m, E, dtype=dtype) * (0.01 / math.sqrt(m))) if gate else None
        self.gate_bias = nn.Parameter(torch.full((E,), GATE_BIAS_INIT, dtype=dtype)) if gate else None
        self.router = nn.Parameter(torch.zeros(n, width, dtype=dtype)) if gate else None
        self.router_bias = nn.Parameter(torch.zeros(width, dtype=dtype)) if gate else None
        self.last_gate: Tensor | None = None
        self.last_router: Tensor | None = None
        if spectrum:  # from_linear sets the spectrum of the copied weight instead (one SVD)
            self._set_spectrum(self.weight.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, n_experts: int, rank: int | None = None, **kwargs: object) -> SpectralMoELinear:
        """Wrap a pretrained ``linear``: its ``W`` and ``b`` (frozen copies), the top-``rank``
        SVD of ``W`` in float64 stored in ``W``'s dtype."""
        if not isinstance(linear, nn.Linear):
            raise InvalidInputError(f"from_linear needs an nn.Linear, not {type(linear).__name__}")
        layer = cls(
            linear.in_features, linear.out_features, n_experts, rank, bias=linear.bias is not None,
            dtype=linear.weight.dtype, spectrum=False, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        layer.to(linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)  # type: ignore[union-attr]
        layer._set_spectrum(layer.weight.detach())
        return layer

    def _set_spectrum(self, weight: Tensor) -> None:
        """Top-k SVD of ``weight`` in float64 (signs as LAPACK returns them)."""
        U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
        k = self.rank
        with torch.no_grad():
            self.U.copy_(U[:, :k])
            self.V.copy_(Vh[:k].T)
            self.sigma.copy_(S[:k])
            if self.residual is not None:
                self.residual = (weight.double() - (U[:, :k] * S[:k]) @ Vh[:k]).to(weight.dtype)

    def train_bases(self, enabled: bool = True) -> None:
        """Let ``U`` and ``V`` train (the remainder becomes a frozen buffer of its own)."""
        if enabled and self.residual is None:
            w = self.weight.detach().double()
            self.residual = (w - (self.U.double() * self.sigma.double()) @ self.V.double().T).to(self.weight.dtype)
        self.U.requires_grad_(enabled)
        self.V.requires_grad_(enabled)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # A layer saved with trainable bases carries its remainder; make room for it.
        if prefix + "residual" in state_dict and self.residual is None:
            self.residual = torch.empty_like(self.weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def params(self) -> MoEParams:
        """The tensors the pure functions take."""
        return MoEParams(
            self.weight, self.bias, self.U, self.sigma, self.V, self.scales,
            self.gate, self.gate_bias, self.router, self.router_bias, self.residual,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """``(…, in_features) → (…, out_features)`` by the fast path."""
        result = fast_forward(x, self.params(), self.mode)
        self.last_gate, self.last_router = result.gate.detach(), result.router.detach()
        return result.out

    def naive(self, x: Tensor) -> Tensor:
        """The literal per-expert computation (reference for tests and benchmarks)."""
        return naive_forward(x, self.params(), self.mode).out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, n_experts={self.n_experts}, "
            f"rank={self.rank}, router={self.router_kind!r}, mode={self.mode!r}, bias={self.bias is not None}, gate={self.use_gate}"
        )


def _check(n: int, m: int, n_experts: int, rank: int | None, router: str, mode: str) -> None:
    """One clear line per bad argument."""
    if n < 1 or m < 1:
        raise InvalidInputError(f"in_features and out_features must be ≥ 1, got {n} and {m}")
    if n_experts < 1:
        raise InvalidInputError(f"n_experts must be ≥ 1, got {n_experts}")
    if rank is not None and not 1 <= rank <= min(m, n):
        raise InvalidInputError(f"rank must be between 1 and min(out_features, in_features) = {min(m, n)}, got {rank}")
    if router not in ("token", "feature"):
        raise InvalidInputError(f"router must be 'token' or 'feature', got {router!r}")
    if mode not in ("spectral", "output"):
        raise InvalidInputError(f"mode must be 'spectral' or 'output', got {mode!r}")
