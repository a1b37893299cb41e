"""Zoology's finding (Arora et al. 2023) on MQAR with the proxy evaluator, CPU-sized: full attention
learns multi-query associative recall, pure linear attention of the same width stays clearly below
it, and a hybrid with one full-attention layer among linear ones recovers most of the gap.

Setting: 2 layers, d_model 64, 2 heads of 32, SwiGLU ratio 0.5; MQAR with 16 tokens, 3 pairs, 16 keys,
8 values; batch 32, 600 steps, lr 2e-3. The linear layers are the Linear Transformer with ReLU
features and no short conv. Why this gap and not Zoology's capacity gap:

- A linear-attention layer without a conv has no position signal: it reads its prefix as an
  unordered set, so it cannot tell which value followed which key, and pure linear attention stays
  on the "some value of the context" plateau at any budget (a structural gap, not a slow start).
- A full layer with RoPE placed *first* gives the model the previous-token shift; the linear layer
  after it then only has to look the key up ("FA"). With the full layer last ("AF") nothing shifts
  before it and the hybrid stays on the plateau; that is why earlier attempts showed no recovery.
- ReLU features, not ELU+1: with ELU+1 the FA hybrid stayed on the plateau for 800 steps (ELU+1
  features are dense and positive, so a lookup among the prefix stays blurred); with ReLU it learns.
- The capacity gap needs the conv on the linear layers, and a conv linear layer recalls far more
  than a minute's budget can show: 0.84 with 2 heads of 8 at 8 pairs, 0.996 for Performer with 16
  features, 0.865 at 2 x 32 with 16 pairs (seq 64); full attention itself needs heads of 32 to
  learn MQAR within ~600 steps (2 x 8, 8 x 8, 4 x 16: still on the plateau) and long sequences
  for many pairs, which costs minutes on this CPU (the previous version of this file has the
  table of settings tried).
- lr: FA learns in 4 of 5 seeds at lr 3e-3 (seed 1 stuck at 0.55 even at 600 steps) and full
  attention at lr 1e-2 never leaves the plateau; 2e-3 learnt every seed tried.

Measured (MQAR accuracy after 600 steps, torch 2.13 CPU, 1 thread per run), seeds 0 / 1 / 2:
    FF  1.000 / 1.000 / 1.000
    AA  0.478 / 0.470 / -        (the plateau: a guess among the 3 values of the context)
    FA  0.999 / 0.945 / 0.987    (recovers 100% / 90% / 97% of the gap)
Cost of this file (seed 0, the test): 54 s of CPU in all (three runs of 10-16 s plus three process
start-ups), 36 s in pytest, 41 s wall with the shared 2-core CPU at load ~2.

Also the regression test of issue 3: with GPT-2's init_std 0.02 at proxy width the full-attention
proxy never left the plateau (0.44 accuracy after 1000-2000 steps, like linear); the proxy now
initialises at its own width's fan-in std.
"""
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from attnsearch.evaluators import tasks as T
from attnsearch.evaluators.proxy import proxy_arch, proxy_init_std
from attnsearch.evaluators.quality import ProxySpec, evaluate_quality
from attnsearch.space.arch import ArchConfig

D_MODEL, HEADS, HEAD_DIM, MLP_RATIO = 64, 2, 32, 0.5
SEQ_LEN, KV_PAIRS, NUM_KEYS, NUM_VALUES = 16, 3, 16, 8
BATCH, STEPS, LR, SEED = 32, 600, 2e-3, 0
LINEAR = {"linear": {"feature_map": "relu", "conv_size": 0}}     # no conv: blind to order (see doc)
MQAR = T.MQARSpec(seq_len=SEQ_LEN, num_kv_pairs=KV_PAIRS, num_keys=NUM_KEYS, num_values=NUM_VALUES)
PROXY = ProxySpec(d_model=D_MODEL, n_layers=None, n_heads=HEADS, head_dim=HEAD_DIM, batch=BATCH, steps=STEPS,
                  lr=LR, seed=SEED, tasks={"mqar": MQAR}, eval_sequences=256, curve_points=5)
LAYOUTS = ("FF", "AA", "FA")     # pure full, pure linear, one full layer (first) among linear ones


def arch_of(layout: str) -> ArchConfig:
    return ArchConfig.from_layout(layout, layer_params=LINEAR, d_model=D_MODEL, n_heads=HEADS, head_dim=HEAD_DIM,
                                  mlp_ratio=MLP_RATIO, max_seq_len=SEQ_LEN)


def test_proxy_initialises_at_its_own_width():
    arch = ArchConfig.from_layout("FF", d_model=1024, n_heads=8, head_dim=128, init_std=0.02)
    for d in (32, 64):
        assert proxy_arch(arch, d_model=d, n_layers=2, n_heads=2, head_dim=16, seq_len=32,
                          vocab_size=256).init_std == pytest.approx(d ** -0.5) == proxy_init_std(d)


@pytest.fixture(scope="module")
def accuracies():
    # the three runs in separate processes (one thread each), two at a time on two cores
    workers = max(1, min(len(LAYOUTS), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        results = dict(zip(LAYOUTS, pool.map(evaluate_quality, [arch_of(l) for l in LAYOUTS],
                                             [PROXY] * len(LAYOUTS))))
    for layout, r in results.items():
        assert not r.diverged, (layout, r.reason)
    acc = {layout: r.metrics["mqar"]["accuracy"] for layout, r in results.items()}
    print("MQAR accuracy", acc)
    return acc


def test_full_attention_learns_mqar(accuracies):
    assert accuracies["FF"] >= 0.9, accuracies


def test_linear_attention_stays_clearly_below_full(accuracies):
    assert accuracies["FF"] - accuracies["AA"] >= 0.3, accuracies


def test_one_full_layer_among_linear_ones_recovers_most_of_the_gap(accuracies):
    gap = accuracies["FF"] - accuracies["AA"]
    assert accuracies["FA"] - accuracies["AA"] >= 0.75 * gap, accuracies
