"""Synthetic recall tasks, generated on the fly from a seed (no downloads).

Every task is a small pure function of (spec, batch size, torch.Generator) returning
    inputs    LongTensor [B, T]   tokens the model reads
    targets   LongTensor [B, T]   the token the model must predict at each position
    loss_mask BoolTensor [B, T]   which positions are scored (the recalled answers only)

All tasks share the byte vocabulary 0..255 with the language-modelling corpus, so one model
(vocab 256) learns them together. Task tokens live in ranges that Python source text barely uses:
control bytes for special and noise tokens, the upper half (non-ASCII bytes) for keys and values.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

VOCAB_SIZE = 256
FILLER = 0          # fills positions that carry nothing (MQAR's gaps between queries)
COPY_MARK = 1       # "now copy" separator in selective copying
BLANK = 2           # the noise token between content tokens in selective copying
NOISE_START, NOISE_COUNT = 16, 16    # noise vocabulary of noisy recall: bytes 16..31
KEY_START, KEY_COUNT = 128, 64       # keys: bytes 128..191
VALUE_START, VALUE_COUNT = 192, 64   # values / content tokens: bytes 192..255


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MQARSpec(_Spec):
    """Multi-query associative recall (Zoology, Arora et al. 2023).

    The sequence starts with `num_kv_pairs` key-value pairs; the rest is a query region where
    every key is asked once, at a slot drawn with Zoology's power-law gap distribution
    (p(gap) proportional to gap ** (power_a - 1), so most queries come soon after the pairs).
    The model must emit the key's value at the query position; the value never appears there.
    """
    kind: Literal["mqar"] = "mqar"
    seq_len: int = Field(64, ge=8)
    num_kv_pairs: int = Field(8, ge=1)
    num_keys: int = Field(KEY_COUNT, ge=1, le=KEY_COUNT)
    num_values: int = Field(VALUE_COUNT, ge=1, le=VALUE_COUNT)
    power_a: float = Field(0.01, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _fits(self):
        if self.num_kv_pairs > self.num_keys:
            raise ValueError(f"num_kv_pairs ({self.num_kv_pairs}) must be <= num_keys ({self.num_keys}): "
                             "keys are distinct within a sequence")
        slots = (self.seq_len - 2 * self.num_kv_pairs) // 2
        if slots < self.num_kv_pairs:
            raise ValueError(f"seq_len {self.seq_len} too short for {self.num_kv_pairs} kv pairs: needs "
                             f">= {4 * self.num_kv_pairs} (pairs, then one query slot per key)")
        return self


class SelectiveCopySpec(_Spec):
    """Selective copying (MAD, Poli et al. 2024; Mamba's selective copy).

    `num_tokens` content tokens are scattered among BLANK noise tokens; after COPY_MARK the model
    must reproduce them in order (teacher forcing: it reads the answers it already gave).
    """
    kind: Literal["selective_copy"] = "selective_copy"
    seq_len: int = Field(64, ge=8)
    num_tokens: int = Field(8, ge=1)
    num_values: int = Field(16, ge=2, le=VALUE_COUNT)

    @model_validator(mode="after")
    def _fits(self):
        if self.seq_len - self.num_tokens < self.num_tokens:
            raise ValueError(f"seq_len {self.seq_len} too short to hide {self.num_tokens} tokens: "
                             f"needs >= {2 * self.num_tokens}")
        return self


class NoisyRecallSpec(_Spec):
    """Noisy in-context recall (MAD): a stream of key-value pairs from a per-sequence mapping,
    keys repeating, with noise pairs interleaved. Whenever a key comes back, the model must
    emit the value it was bound to earlier in the same sequence; first occurrences are unscored.
    """
    kind: Literal["noisy_recall"] = "noisy_recall"
    seq_len: int = Field(64, ge=4)
    num_keys: int = Field(8, ge=1, le=KEY_COUNT)
    num_values: int = Field(VALUE_COUNT, ge=1, le=VALUE_COUNT)
    noise_frac: float = Field(0.25, ge=0.0, lt=1.0)


class LMSpec(_Spec):
    """Byte-level language modelling on the corpus (see corpus.py); every position is scored."""
    kind: Literal["lm"] = "lm"
    seq_len: int = Field(128, ge=2)


TaskSpec = Annotated[Union[MQARSpec, SelectiveCopySpec, NoisyRecallSpec, LMSpec], Field(discriminator="kind")]
SYNTHETIC_KINDS = ("mqar", "selective_copy", "noisy_recall")


def _sample_without_replacement(weights: torch.Tensor, batch: int, k: int, generator) -> torch.Tensor:
    """[batch, k] distinct indices drawn with probability proportional to `weights`, in draw order
    (Gumbel top-k: the k largest log-weight + Gumbel noise)."""
    u = torch.rand(batch, weights.numel(), generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return torch.topk(weights.log().to(torch.float64) + gumbel, k, dim=1).indices


def _random_distinct(batch: int, population: int, k: int, generator) -> torch.Tensor:
    """[batch, k] distinct integers from range(population), uniformly, in random order."""
    return torch.rand(batch, population, generator=generator).argsort(dim=1)[:, :k]


def make_mqar(spec: MQARSpec, batch: int, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, N = spec.seq_len, spec.num_kv_pairs
    keys = KEY_START + _random_distinct(batch, spec.num_keys, N, generator)              # [B, N]
    values = VALUE_START + torch.randint(spec.num_values, (batch, N), generator=generator)
    inputs = torch.full((batch, T), FILLER, dtype=torch.long)
    targets = torch.full((batch, T), FILLER, dtype=torch.long)
    mask = torch.zeros(batch, T, dtype=torch.bool)
    inputs[:, 0:2 * N:2] = keys
    inputs[:, 1:2 * N:2] = values
    # Query slot s sits at position 2N + 2s; the gap s is drawn from the power law, without
    # replacement, and key i is asked at the i-th slot drawn (a random order of the keys).
    slots = (T - 2 * N) // 2
    gap_weights = spec.power_a * torch.arange(1, slots + 1, dtype=torch.float64) ** (spec.power_a - 1)
    gaps = _sample_without_replacement(gap_weights, batch, N, generator)                # [B, N]
    positions = 2 * N + 2 * gaps
    inputs.scatter_(1, positions, keys)
    targets.scatter_(1, positions, values)
    mask.scatter_(1, positions, True)
    return inputs, targets, mask


def make_selective_copy(spec: SelectiveCopySpec, batch: int, generator):
    T, N = spec.seq_len, spec.num_tokens
    context = T - N                                       # then COPY_MARK and N - 1 answers
    content = VALUE_START + torch.randint(spec.num_values, (batch, N), generator=generator)
    where = _random_distinct(batch, context, N, generator).sort(dim=1).values          # in order
    inputs = torch.full((batch, T), BLANK, dtype=torch.long)
    inputs.scatter_(1, where, content)
    inputs[:, context] = COPY_MARK
    inputs[:, context + 1:] = content[:, :-1]
    targets = torch.full((batch, T), FILLER, dtype=torch.long)
    targets[:, context:] = content
    mask = torch.zeros(batch, T, dtype=torch.bool)
    mask[:, context:] = True
    return inputs, targets, mask


def make_noisy_recall(spec: NoisyRecallSpec, batch: int, generator):
    T = spec.seq_len
    pairs = T // 2
    key_ids = _random_distinct(batch, KEY_COUNT, spec.num_keys, generator)             # this sequence's keys
    bound = torch.randint(spec.num_values, (batch, spec.num_keys), generator=generator)  # key -> value
    which = torch.randint(spec.num_keys, (batch, pairs), generator=generator)
    keys = KEY_START + key_ids.gather(1, which)
    values = VALUE_START + bound.gather(1, which)
    is_noise = torch.rand(batch, pairs, generator=generator) < spec.noise_frac
    noise = NOISE_START + torch.randint(NOISE_COUNT, (batch, pairs, 2), generator=generator)
    first = torch.where(is_noise, noise[..., 0], keys)
    second = torch.where(is_noise, noise[..., 1], values)
    inputs = torch.full((batch, T), FILLER, dtype=torch.long)
    inputs[:, 0:2 * pairs:2] = first
    inputs[:, 1:2 * pairs:2] = second
    # A pair is scored when its key was already shown (with its value) in an earlier real pair.
    shown = torch.zeros(batch, spec.num_keys, dtype=torch.bool)
    scored = torch.zeros(batch, pairs, dtype=torch.bool)
    rows = torch.arange(batch)
    for p in range(pairs):
        real = ~is_noise[:, p]
        scored[:, p] = real & shown[rows, which[:, p]]
        shown[rows[real], which[real, p]] = True
    targets = torch.full((batch, T), FILLER, dtype=torch.long)
    mask = torch.zeros(batch, T, dtype=torch.bool)
    targets[:, 0:2 * pairs:2] = torch.where(scored, values, FILLER)
    mask[:, 0:2 * pairs:2] = scored
    return inputs, targets, mask


def context_candidates(spec) -> int:
    """How many distinct answers a sequence's context offers at most: a model that has learnt
    which tokens answer but not which one belongs to the query guesses among these (the
    plateau every layout reaches before it recalls; the zero point of a recall task's score)."""
    if isinstance(spec, MQARSpec):
        return min(spec.num_kv_pairs, spec.num_values)
    if isinstance(spec, NoisyRecallSpec):
        return min(spec.num_keys, spec.num_values)
    if isinstance(spec, SelectiveCopySpec):
        return min(spec.num_tokens, spec.num_values)
    raise ValueError(f"context_candidates: {spec!r} is not a recall task; allowed kinds: {', '.join(SYNTHETIC_KINDS)}")


_MAKERS = {"mqar": make_mqar, "selective_copy": make_selective_copy, "noisy_recall": make_noisy_recall}


def make_batch(spec, batch: int, generator: torch.Generator, corpus=None):
    """(inputs, targets, loss_mask) for one batch of `spec`; `corpus` is needed only for LMSpec."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if isinstance(spec, LMSpec):
        if corpus is None:
            raise ValueError("an LM task needs a corpus (attnsearch.evaluators.corpus.load_corpus)")
        return corpus.sample_batch(spec.seq_len, batch, generator, split="train")
    try:
        maker = _MAKERS[spec.kind]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown task spec {spec!r}; allowed kinds: {', '.join(SYNTHETIC_KINDS)}, lm") from None
    return maker(spec, batch, generator)
