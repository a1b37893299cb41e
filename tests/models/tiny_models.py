"""Tiny float64 models, one per mechanism, with parameters small enough that every sparse
pattern has several blocks within a few dozen tokens."""
import torch

from attnsearch.models import build_model
from attnsearch.space import MECHANISMS, ArchConfig, LayerSpec

SMALL_PARAMS = {
    "sliding_window": {"window": 5},
    "dilated": {"block_size": 16, "dilation": 2},
    "random_sparse": {"block_size": 16, "num_random_blocks": 1, "seed": 3},
    "longformer": {"block_size": 16, "window": 7, "num_global_blocks": 1},
    "bigbird": {"block_size": 16, "window": 7, "num_global_blocks": 1, "num_random_blocks": 1, "seed": 5},
    "block_topk": {"block_size": 16, "top_k": 1},
    "linear": {"conv_size": 3},
    "performer": {"num_features": 16},
    "cosformer": {"max_len": 64},
    "retnet": {"conv_size": 2},
    "gla": {"gate_rank": 4},
}
VOCAB = 41


def tiny_config(name, n_layers=2, **dims) -> ArchConfig:
    mech = MECHANISMS[name]
    kernel_config = None if mech.family == "softmax" else {"chunk_size": 16}
    layer = LayerSpec(mechanism=name, params=SMALL_PARAMS.get(name, {}), kernel_config=kernel_config)
    base = dict(d_model=32, n_heads=2, head_dim=16, vocab_size=VOCAB, max_seq_len=128)
    base.update(dims)
    return ArchConfig(n_layers=n_layers, layers=[layer] * n_layers, **base)


def tiny_model(name, seed=0, **dims):
    torch.manual_seed(seed)
    model = build_model(tiny_config(name, **dims)).double().eval()
    # random (not zero-initialised) extras, so every path of the layer matters in the checks
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model
