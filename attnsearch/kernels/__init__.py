"""Functional attention ops (DESIGN.md contract). Imports nothing else of the project."""
from .ops import delta_rule, linear_attention, resolve_backend, softmax_attention
from .reference import (delta_rule_ref, linear_attention_ref, softmax_attention_ref,
                        visibility_mask)

__all__ = [
    "softmax_attention", "linear_attention", "delta_rule", "resolve_backend",
    "softmax_attention_ref", "linear_attention_ref", "delta_rule_ref", "visibility_mask",
]
