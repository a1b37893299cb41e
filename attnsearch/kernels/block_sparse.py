"""INTERIM: torch backend for softmax_attention (being replaced by the block-sparse path)."""
from .reference import softmax_attention_ref

CONFIG_SPACE = {"softmax_attention": {}}


def softmax_attention_torch(q, k, v, *, window, block_indices, block_size, scale, config):
    return softmax_attention_ref(q, k, v, window, block_indices, block_size, scale)
