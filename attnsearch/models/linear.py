"""Linear-family mixers (linear_attention / delta_rule ops) and their recurrent decoding.

Each mixer turns x [B, T, d] into the op's inputs (`_inputs`: q, k, v, gate, beta, plus what its
output needs), runs the op (whole sequence) or the single-step recurrence (decoding), and
finishes (`_output`: normaliser, norm, gate, out projection). Both paths share `_inputs` and
`_output`, so they compute the same function.

Decode cache of one layer: {"state": [B, H, Kf, V]} plus "z" [B, H, Kf] (running key sum of the
normalised kinds: linear, performer, cosformer) and "conv" [B, C, conv_size - 1] (short conv tail).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnsearch import kernels

from .common import RMSNorm, ShortConv, rope, split_kernel_config

NORMALISER_EPS = 1e-6


class LinearMixer(nn.Module):
    """Base: q/k/v/o projections, optional short conv on [q, k, v], no feature map, no decay."""
    family = "linear"
    normalised = False          # divide by phi(q) . sum phi(k) (Linear Transformer style)
    qk_silu = False             # SiLU on q, k when there is no conv (DeltaNet's default)

    def __init__(self, arch, layer, backend: str = "auto"):
        super().__init__()
        d, H, K, V = arch.d_model, arch.n_heads, arch.head_dim, arch.v_head_dim
        self.d_model, self.n_heads, self.head_dim, self.v_head_dim = d, H, K, V
        self.params = dict(layer.params)
        self.rope_theta = arch.rope_theta
        self.eps = arch.norm_eps
        self.backend = backend
        self.chunk_size, self.op_config = split_kernel_config(layer.kernel_config)
        self._projections(d, H, K, V)
        c = self.params.get("conv_size", 0)
        self.conv = ShortConv(self._conv_channels(), c, bias=self._conv_bias()) if c else None

    # ------------------------------------------------------------------ per-mechanism pieces
    def _projections(self, d, H, K, V):
        self.q_proj = nn.Linear(d, H * K, bias=False)
        self.k_proj = nn.Linear(d, H * K, bias=False)
        self.v_proj = nn.Linear(d, H * V, bias=False)
        self.o_proj = nn.Linear(H * V, d, bias=False)

    def _conv_channels(self):
        return 2 * self.n_heads * self.head_dim + self.n_heads * self.v_head_dim

    def _conv_bias(self):
        return False

    def _pre_conv(self, x):
        """x [B, T, d] -> (conv input [B, T, C], side inputs that bypass the conv)."""
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1), {}

    def _split(self, u, x, positions, side):
        """Conv output u [B, T, C] -> dict(q, k, v, g, beta, ...) for the op."""
        B, T, _ = u.shape
        H, K, V = self.n_heads, self.head_dim, self.v_head_dim
        q, k, v = u.split([H * K, H * K, H * V], dim=-1)
        q, k, v = q.reshape(B, T, H, K), k.reshape(B, T, H, K), v.reshape(B, T, H, V)
        if self.conv is None and self.qk_silu:
            q, k = F.silu(q), F.silu(k)
        q, k = self.feature_map(q, positions), self.feature_map(k, positions, is_key=True)
        return {"q": q, "k": k, "v": v, "g": self.gate(x), "scale": self.scale()}

    def feature_map(self, x, positions, is_key=False):
        return x

    def gate(self, x):
        return None

    def scale(self):
        return 1.0 if self.normalised else self.head_dim ** -0.5

    def _finish(self, o, x, inp):
        """o [B, T, H, V] (normalised already) -> [B, T, d]."""
        B, T = o.shape[:2]
        return self.o_proj(o.reshape(B, T, -1))

    # ------------------------------------------------------------------ shared plumbing
    def _inputs(self, x, positions, conv_tail=None):
        u, side = self._pre_conv(x)
        new_tail = None
        if self.conv is not None:
            if conv_tail is None:
                new_tail = self.conv.tail_of(u)
                u = self.conv(u)
            else:                                            # one decoding step: T == 1
                y, new_tail = self.conv.step(u[:, 0], conv_tail)
                u = y[:, None]
        return self._split(u, x, positions, side), new_tail

    def _normalise(self, o, q, z):
        """Linear Transformer normaliser: o / (phi(q) . z), z the running sum of phi(k)."""
        den = (q * z).sum(-1, keepdim=True)
        return o / (den + NORMALISER_EPS)

    def _run_op(self, inp, initial_state=None, output_final_state=False):
        return kernels.linear_attention(inp["q"], inp["k"], inp["v"], inp["g"], scale=inp["scale"],
                                        chunk_size=self.chunk_size, initial_state=initial_state,
                                        output_final_state=output_final_state, backend=self.backend,
                                        config=self.op_config)

    def _run_step(self, inp, state):
        g = inp["g"]
        return kernels.linear_attention_step(inp["q"][:, 0], inp["k"][:, 0], inp["v"][:, 0],
                                             None if g is None else (g if g.dim() == 1 else g[:, 0]),
                                             state, inp["scale"])

    def forward(self, x, cache=None):
        T = x.shape[1]
        inp, tail = self._inputs(x, torch.arange(T, device=x.device))
        o, state = self._run_op(inp, output_final_state=cache is not None)
        if self.normalised:
            z = inp["k"].cumsum(1)
            o = self._normalise(o, inp["q"], z)
        if cache is not None:
            cache["state"] = state.to(cache["state"].dtype)
            if self.normalised:
                cache["z"] = z[:, -1].to(cache["z"].dtype)
            if self.conv is not None:
                cache["conv"] = tail.to(cache["conv"].dtype)
        return self._finish(o, x, inp)

    def init_cache(self, batch: int, device=None, dtype=torch.float32) -> dict:
        H, V = self.n_heads, self.v_head_dim
        Kf = self.feature_dim()
        cache = {"state": torch.zeros(batch, H, Kf, V, device=device, dtype=dtype)}
        if self.normalised:
            cache["z"] = torch.zeros(batch, H, Kf, device=device, dtype=dtype)
        if self.conv is not None:
            cache["conv"] = torch.zeros(batch, self._conv_channels(), self.conv.size - 1,
                                        device=device, dtype=dtype)
        return cache

    def feature_dim(self):
        return self.head_dim

    def step(self, x, cache, pos: int):
        here = torch.full((1,), pos, dtype=torch.long, device=x.device)   # no host-to-device copy: no sync
        inp, tail = self._inputs(x[:, None], here, cache.get("conv"))
        o, cache["state"] = self._run_step(inp, cache["state"])
        o = o[:, None]
        if self.normalised:
            cache["z"] = cache["z"] + inp["k"][:, 0]
            o = self._normalise(o, inp["q"], cache["z"][:, None])
        if tail is not None:
            cache["conv"] = tail
        return self._finish(o, x[:, None], inp)[:, 0]


class LinearTransformerMixer(LinearMixer):
    """Katharopoulos et al.: phi = ELU + 1 (or ReLU), output normalised by phi(q) . sum phi(k)."""
    normalised = True

    def feature_map(self, x, positions, is_key=False):
        return F.elu(x) + 1 if self.params["feature_map"] == "elu" else F.relu(x)


class PerformerMixer(LinearMixer):
    """FAVOR+: phi(x) = exp(w . x - |x|^2 / 2) / sqrt(m), x = input * K^-1/4, fixed Gaussian w,
    so phi(q) . phi(k) estimates exp(q . k / sqrt(K)). Queries are shifted by their own max
    (cancels in the normalised ratio); keys are not, since a shared key shift would peek ahead."""
    normalised = True

    def __init__(self, arch, layer, backend="auto"):
        super().__init__(arch, layer, backend)
        gen = torch.Generator().manual_seed(self.params["seed"])
        m = self.params["num_features"]
        self.register_buffer("features", torch.randn(m, self.head_dim, generator=gen))

    def feature_dim(self):
        return self.params["num_features"]

    def feature_map(self, x, positions, is_key=False):
        x = x * self.head_dim ** -0.25
        proj = x @ self.features.to(x.dtype).t() - x.pow(2).sum(-1, keepdim=True) / 2
        if not is_key:
            proj = proj - proj.amax(-1, keepdim=True).detach()
        return torch.exp(proj) / math.sqrt(self.features.shape[0])


class CosFormerMixer(LinearMixer):
    """cosFormer: phi = ReLU, reweighted by cos(pi/2 (i - j) / M) via the identity
    cos(a - b) = cos a cos b + sin a sin b, i.e. features [relu(x) cos(pi i/2M), relu(x) sin(pi i/2M)]."""
    normalised = True

    def feature_dim(self):
        return 2 * self.head_dim

    def feature_map(self, x, positions, is_key=False):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        angle = positions.to(work) * (math.pi / 2 / self.params["max_len"])
        cos, sin = angle.cos().to(x.dtype)[None, :, None, None], angle.sin().to(x.dtype)[None, :, None, None]
        r = F.relu(x)
        return torch.cat([r * cos, r * sin], dim=-1)


class _NormGateOutput:
    """Per-head RMSNorm on o, times SiLU(g_proj(x)) (RetNet, GLA, Gated DeltaNet)."""

    def _finish(self, o, x, inp):
        B, T = o.shape[:2]
        o = self.o_norm(o)
        if getattr(self, "g_proj", None) is not None:
            o = o * F.silu(self.g_proj(x)).view(B, T, self.n_heads, self.v_head_dim)
        return self.o_proj(o.reshape(B, T, -1))


class RetNetMixer(_NormGateOutput, LinearMixer):
    """Retention: RoPE'd q/k, fixed per-head decay gamma_h = 1 - 2^(-5 - h), group (per-head)
    norm and swish output gate."""

    def _projections(self, d, H, K, V):
        super()._projections(d, H, K, V)
        self.g_proj = nn.Linear(d, H * V, bias=False)
        self.o_norm = RMSNorm(V, self.eps)
        self.register_buffer("log_decay", torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float64))))

    def feature_map(self, x, positions, is_key=False):
        return rope(x, positions, self.rope_theta)

    def gate(self, x):
        return self.log_decay.to(x.dtype)


class GLAMixer(_NormGateOutput, LinearMixer):
    """Gated Linear Attention: per-channel gate logsigmoid(W2 W1 x + b) / temperature."""

    def _projections(self, d, H, K, V):
        super()._projections(d, H, K, V)
        r = self.params["gate_rank"]
        self.gk_down = nn.Linear(d, r, bias=False)
        self.gk_up = nn.Linear(r, H * K, bias=True)
        self.g_proj = nn.Linear(d, H * V, bias=False)
        self.o_norm = RMSNorm(V, self.eps)

    def gate(self, x):
        B, T, _ = x.shape
        g = F.logsigmoid(self.gk_up(self.gk_down(x))) / self.params["gate_temperature"]
        return g.view(B, T, self.n_heads, self.head_dim)


class Mamba2Mixer(LinearMixer):
    """Mamba-2 (SSD) on linear_attention: in_proj -> z, x, B, C, dt; causal conv + SiLU on
    (x, B, C); dt = softplus(dt + dt_bias); decay g = -exp(A_log) * dt (scalar per head);
    q = C, k = B (shared by all heads), v = x * dt; y = o + D * x; out = out_proj(norm(y * silu(z)))."""

    def _projections(self, d, H, K, V):
        self.in_proj = nn.Linear(d, 2 * H * V + 2 * K + H, bias=False)
        self.out_proj = nn.Linear(H * V, d, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))      # inverse softplus
        self.D = nn.Parameter(torch.ones(H))
        self.norm = RMSNorm(H * V, self.eps)

    def _conv_channels(self):
        return self.n_heads * self.v_head_dim + 2 * self.head_dim

    def _conv_bias(self):
        return True

    def _pre_conv(self, x):
        H, V = self.n_heads, self.v_head_dim
        z, xbc, dt = self.in_proj(x).split([H * V, H * V + 2 * self.head_dim, H], dim=-1)
        return xbc, {"z": z, "dt": dt}

    def _split(self, u, x, positions, side):
        B, T, _ = u.shape
        H, K, V = self.n_heads, self.head_dim, self.v_head_dim
        xs, Bm, Cm = u.split([H * V, K, K], dim=-1)
        xs = xs.reshape(B, T, H, V)
        dt = F.softplus(side["dt"] + self.dt_bias)                              # [B, T, H]
        g = -torch.exp(self.A_log) * dt
        k = Bm[:, :, None, :].expand(B, T, H, K).contiguous()
        q = Cm[:, :, None, :].expand(B, T, H, K).contiguous()
        return {"q": q, "k": k, "v": xs * dt[..., None], "g": g, "scale": 1.0, "x": xs, "z": side["z"]}

    def _finish(self, o, x, inp):
        B, T = o.shape[:2]
        y = o + self.D[:, None] * inp["x"]
        y = self.norm(y.reshape(B, T, -1) * F.silu(inp["z"]))
        return self.out_proj(y)


class DeltaNetMixer(LinearMixer):
    """DeltaNet: SiLU (via the conv, or directly) then L2-normalised q, k; beta = sigmoid(W x);
    delta rule; per-head RMSNorm on the output."""
    family = "delta"
    qk_silu = True

    def _projections(self, d, H, K, V):
        super()._projections(d, H, K, V)
        self.b_proj = nn.Linear(d, H, bias=False)
        self.o_norm = RMSNorm(V, self.eps)

    def feature_map(self, x, positions, is_key=False):
        return F.normalize(x, p=2, dim=-1)

    def _split(self, u, x, positions, side):
        inp = super()._split(u, x, positions, side)
        inp["beta"] = torch.sigmoid(self.b_proj(x))
        return inp

    def _run_op(self, inp, initial_state=None, output_final_state=False):
        return kernels.delta_rule(inp["q"], inp["k"], inp["v"], inp["beta"], inp["g"], scale=inp["scale"],
                                  chunk_size=self.chunk_size, initial_state=initial_state,
                                  output_final_state=output_final_state, backend=self.backend,
                                  config=self.op_config)

    def _run_step(self, inp, state):
        g = inp["g"]
        return kernels.delta_rule_step(inp["q"][:, 0], inp["k"][:, 0], inp["v"][:, 0], inp["beta"][:, 0],
                                       None if g is None else g[:, 0], state, inp["scale"])

    def _finish(self, o, x, inp):
        B, T = o.shape[:2]
        return self.o_proj(self.o_norm(o).reshape(B, T, -1))


class GatedDeltaNetMixer(_NormGateOutput, DeltaNetMixer):
    """Gated DeltaNet: DeltaNet plus Mamba-2-style decay g = -exp(A_log) softplus(W_a x + dt_bias)
    and an output gate (per-head RMSNorm times SiLU(W_g x))."""

    def _projections(self, d, H, K, V):
        super()._projections(d, H, K, V)
        self.a_proj = nn.Linear(d, H, bias=False)
        self.g_proj = nn.Linear(d, H * V, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))

    def gate(self, x):
        return -torch.exp(self.A_log) * F.softplus(self.a_proj(x) + self.dt_bias)


LINEAR_MIXERS = {
    "linear": LinearTransformerMixer,
    "performer": PerformerMixer,
    "cosformer": CosFormerMixer,
    "retnet": RetNetMixer,
    "mamba2": Mamba2Mixer,
    "gla": GLAMixer,
    "deltanet": DeltaNetMixer,
    "gated_deltanet": GatedDeltaNetMixer,
}
