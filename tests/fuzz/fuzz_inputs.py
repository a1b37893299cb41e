"""Hypothesis strategies for malformed inputs: structure-aware mutations of a valid space file and
a valid ArchConfig (a field dropped, retyped, made out of range, an unknown field added, the
text truncated or garbled), and a counter of the inputs tried (reported by conftest.py).

A plain module (imported by name): conftest.py is not importable when several folders have one.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import yaml
from hypothesis import strategies as st

TRIED: Counter = Counter()          # fuzz target -> inputs tried in this session
OUTCOMES: Counter = Counter()       # e.g. "CLI `run` exit 2" -> count (successes are exercised too)

VALID_SPACE = {
    "target": {"d_model": 256, "n_layers": 4, "n_heads": 4, "head_dim": 64, "vocab_size": 1000,
               "context_len": 4096, "batch_tokens": 65536, "dtype": "bf16", "gpu": "H100"},
    "proxy": {},
    "layout": {"mode": "pattern", "periods": [1, 2, 4]},
    "mechanisms": {"full": {}, "sliding_window": {"window": [512, 1024]},
                   "longformer": {"window": {"low": 128, "high": 1024, "log": True}}, "mamba2": {},
                   "gated_deltanet": {"kernel": {"chunk_size": "auto"}}},
    "constraints": {"min_full_layers": 0, "max_full_layers": 4},
    "objectives": ["quality", "throughput"],
    "sampler": {"name": "tpe", "seed": 0},
    "evaluation": {"throughput": "estimated", "cpus_per_trial": 1},
    "seed": 0,
}

VALID_ARCH = {
    "schema_version": 1, "name": "fuzz", "d_model": 64, "n_layers": 3, "n_heads": 2, "head_dim": 32,
    "vocab_size": 256, "max_seq_len": 512,
    "layers": [{"mechanism": "full", "params": {}},
               {"mechanism": "sliding_window", "params": {"window": 128}},
               {"mechanism": "gated_deltanet", "params": {}, "kernel_config": {"chunk_size": 64}}],
}

# values of every JSON/YAML type, including the awkward ones
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 3, 7, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -0.0, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "full", "H100", "Z80", "bf16", "per_layer", "pattern", "tpe", "maximize",
                     "quality", "state_bytes", "1e9", "yes", "null", "~", "!!python/object", "${HOME}"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _paths(obj, prefix=()):
    """Every path (tuple of keys/indices) inside a nested dict/list, the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    if not path:
        return value
    out = json.loads(json.dumps(obj))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _drop(obj, path):
    if not path:
        return obj
    out = json.loads(json.dumps(obj))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@st.composite
def mutated(draw, valid: dict, max_mutations: int = 3):
    """``valid`` with 1..max_mutations structure-aware mutations."""
    doc = valid
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = list(_paths(doc)) if isinstance(doc, (dict, list)) else [()]
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["replace", "drop", "add", "replace"]))
        if how == "replace" or not path:
            doc = _set(doc, path, draw(values))
        elif how == "drop":
            doc = _drop(doc, path)
        else:
            container = path if isinstance(_get(doc, path), dict) else path[:-1]
            target = _get(doc, container)
            if isinstance(target, dict):
                doc = _set(doc, container + (draw(st.text(min_size=1, max_size=10)),), draw(values))
            else:
                doc = _set(doc, path, draw(values))
        if not isinstance(doc, (dict, list)):
            break
    return doc


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _to_text(doc, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@st.composite
def document_text(draw, valid: dict):
    """A malformed document as YAML or JSON text: a mutated document, or good text garbled."""
    fmt = draw(st.sampled_from(["yaml", "json"]))
    kind = draw(st.sampled_from(["mutated", "mutated", "truncated", "garbled", "random"]))
    if kind == "mutated":
        return fmt, _to_text(draw(mutated(valid)), fmt)
    text = _to_text(valid, fmt)
    if kind == "truncated":
        return fmt, text[:draw(st.integers(0, len(text)))]
    if kind == "garbled":
        i = draw(st.integers(0, len(text)))
        return fmt, text[:i] + draw(st.text(min_size=1, max_size=6)) + text[i:]
    return fmt, draw(st.one_of(st.text(max_size=60), st.sampled_from(
        ["", "---", "[]", "{}", "null", "1", "{\"a\": NaN}", "a: b: c", "- - -", "\t", "key: [unclosed",
         "!!binary aGVsbG8=", "*alias", "&a [*a]", "{" * 50])))
