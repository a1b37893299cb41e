"""Zoology's finding (Arora et al. 2023) on MQAR with the proxy evaluator, CPU-sized: full attention
learns multi-query associative recall, pure linear attention (default params, no short conv) of the
same width stays on the "some value from the context" plateau (measured: FF 0.992, AA 0.437).
Cost: 79 s of CPU on one thread for the file (3 min 22 s wall with the shared CPU at load 4), over
the one-minute target.

What this does NOT show: the hybrid half of the claim, as Zoology's *capacity* gap. Measured at
batch 64, lr 3e-3, 64 keys, 8 values, d_model 64, linear layers with a short conv (conv_size 4) so
that the token shift is not the limit (accuracy after the given steps, 1 thread):

    heads x head_dim  seq  pairs  steps   FF     AA(conv)  AF(conv)
    2 x 32            24     4     600   0.992   0.979     0.996     no capacity gap
    2 x 32            32     8     300   0.36    0.999     1.000     FF not learnt yet
    2 x 32            64    16     600   0.295   0.865     -         (batch 32) FF not learnt
    2 x 16            24     4     600   0.445   0.880     -
    2 x  8            24     4     600   -       0.950     -
    1 x 16            24     6     500   0.401   -         0.788
    1 x  8            24     4     500   0.450   0.432     0.639     gap, but FF does not learn
    2 x  8            32     8     300   -       0.384     0.507

A short-conv linear layer recalls 4-16 pairs at head_dim 32, so a capacity gap needs a small
linear state (1 head of 8: AA stays at 0.43 while the conv hybrid climbs), but at that head size
full attention itself has not learnt MQAR in 500-600 steps (its induction circuit forms at
~400 steps only with 2 heads of 32). Without a conv, 'AF' stays at 0.43 (the full layer needs a
shift before it) and 'FA' at 0.45 (600 steps). Showing all three in one minute was not achieved.

Also the regression test of issue 3: with GPT-2's init_std 0.02 at proxy width the full-attention
proxy never left the plateau (0.44 accuracy after 1000-2000 steps, like linear); the proxy now
initialises at its own width's fan-in std.
"""
import pytest
import torch

from attnsearch.evaluators import tasks as T
from attnsearch.evaluators.proxy import proxy_arch, proxy_init_std
from attnsearch.evaluators.quality import ProxySpec, evaluate_quality
from attnsearch.space.arch import ArchConfig

D_MODEL, HEADS, HEAD_DIM = 64, 2, 32
# The smallest setting seen to learn reliably: at batch 32 or 300 steps full attention is still on
# the plateau (~0.45); width 32 or seq_len 16 with 2-3 pairs did not learn in 300-400 steps either.
SEQ_LEN, KV_PAIRS, NUM_KEYS, NUM_VALUES = 24, 4, 64, 8
BATCH, STEPS, LR = 64, 600, 3e-3
MQAR = T.MQARSpec(seq_len=SEQ_LEN, num_kv_pairs=KV_PAIRS, num_keys=NUM_KEYS, num_values=NUM_VALUES)
PROXY = ProxySpec(d_model=D_MODEL, n_layers=None, n_heads=HEADS, head_dim=HEAD_DIM, batch=BATCH, steps=STEPS,
                  lr=LR, tasks={"mqar": MQAR}, eval_sequences=256, curve_points=5)


def mqar_accuracy(layout: str) -> float:
    torch.set_num_threads(1)       # determinism and fairness on the shared CPU
    arch = ArchConfig.from_layout(layout, d_model=D_MODEL, n_heads=HEADS, head_dim=HEAD_DIM, max_seq_len=SEQ_LEN)
    result = evaluate_quality(arch, PROXY)
    assert not result.diverged, result.reason
    return result.metrics["mqar"]["accuracy"]


def test_proxy_initialises_at_its_own_width():
    arch = ArchConfig.from_layout("FF", d_model=1024, n_heads=8, head_dim=128, init_std=0.02)
    for d in (32, 64):
        assert proxy_arch(arch, d_model=d, n_layers=2, n_heads=2, head_dim=16, seq_len=32,
                          vocab_size=256).init_std == pytest.approx(d ** -0.5) == proxy_init_std(d)


@pytest.fixture(scope="module")
def accuracies():
    acc = {layout: mqar_accuracy(layout) for layout in ("FF", "AA")}
    print("MQAR accuracy", acc)
    return acc


def test_full_attention_learns_mqar(accuracies):
    assert accuracies["FF"] >= 0.9, accuracies


def test_linear_attention_stays_clearly_below_full(accuracies):
    assert accuracies["FF"] - accuracies["AA"] >= 0.3, accuracies
