"""The catalogue's cost formulas against the patterns the softmax mixers really build."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.space import MECHANISMS

from tiny_models import tiny_model

EXACT = ("full", "sliding_window", "dilated", "random_sparse", "block_topk")
UPPER_BOUND = ("longformer", "bigbird")      # window/listed-block overlap is not subtracted


@pytest.mark.parametrize("name", EXACT + UPPER_BOUND)
@pytest.mark.parametrize("T", [40, 64, 100])
def test_softmax_cost_counts_the_visible_pairs(name, T):
    model = tiny_model(name, max_seq_len=256)
    mixer = model.blocks[0].mixer
    config, params = model.config, model.config.layers[0].params
    H, K, V = config.n_heads, config.head_dim, config.v_head_dim
    torch.manual_seed(T)
    q, k = torch.randn(1, T, H, K, dtype=torch.float64), torch.randn(1, T, H, K, dtype=torch.float64)
    pattern = mixer.pattern(q, k)
    mask = kernels.visibility_mask(T, pattern.get("window"), pattern.get("block_indices"),
                                   pattern.get("block_size", 64))
    actual = mask.expand(1, H, T, T).sum().item() / H
    cost = MECHANISMS[name].cost(config, params, T, batch=1)
    counted = cost.detail["core_flops"] / (H * (2 * (K + V) + 5))
    if name in EXACT:
        assert counted == pytest.approx(actual)
    else:
        assert actual <= counted <= 1.5 * actual
