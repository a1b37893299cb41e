"""INTERIM: torch backend for the linear family (being replaced by the chunkwise path)."""
from .reference import delta_rule_ref, linear_attention_ref

CONFIG_SPACE = {"linear_attention": {}, "delta_rule": {}}


def linear_attention_chunked(q, k, v, g, *, scale, chunk_size, initial_state, output_final_state, config):
    return linear_attention_ref(q, k, v, g, scale, initial_state, output_final_state)


def delta_rule_chunked(q, k, v, beta, g, *, scale, chunk_size, initial_state, output_final_state, config):
    return delta_rule_ref(q, k, v, beta, g, scale, initial_state, output_final_state)
