"""Functional attention ops (DESIGN.md contract). Imports nothing else of the project."""
from .masks import (bigbird_pattern, dilated_block_indices, dilated_pattern, global_block_indices,
                    longformer_pattern, merge_block_indices, random_block_indices, random_pattern,
                    sliding_window_pattern, topk_block_indices)
from .ops import delta_rule, linear_attention, resolve_backend, softmax_attention
from .recurrent import delta_rule_step, linear_attention_step
from .reference import (delta_rule_ref, linear_attention_ref, softmax_attention_ref,
                        visibility_mask)

__all__ = [
    "softmax_attention", "linear_attention", "delta_rule", "resolve_backend",
    "linear_attention_step", "delta_rule_step",
    "sliding_window_pattern", "dilated_pattern", "random_pattern", "longformer_pattern",
    "bigbird_pattern", "dilated_block_indices", "random_block_indices", "global_block_indices",
    "merge_block_indices", "topk_block_indices",
    "softmax_attention_ref", "linear_attention_ref", "delta_rule_ref", "visibility_mask",
]
