import pytest
import torch

from attnsearch.evaluators import tasks as T


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


SPECS = [
    T.MQARSpec(seq_len=64, num_kv_pairs=8),
    T.MQARSpec(seq_len=37, num_kv_pairs=4, num_keys=8, num_values=5),
    T.SelectiveCopySpec(seq_len=48, num_tokens=8),
    T.SelectiveCopySpec(seq_len=9, num_tokens=3, num_values=2),
    T.NoisyRecallSpec(seq_len=64, num_keys=6),
    T.NoisyRecallSpec(seq_len=33, num_keys=2, noise_frac=0.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.seq_len}")
def test_shapes_dtypes_and_vocab(spec):
    inputs, targets, mask = T.make_batch(spec, 5, _gen())
    assert inputs.shape == targets.shape == mask.shape == (5, spec.seq_len)
    assert inputs.dtype == targets.dtype == torch.long and mask.dtype == torch.bool
    assert 0 <= int(inputs.min()) and int(inputs.max()) < T.VOCAB_SIZE
    assert mask.any()
    # scored targets are always values/content tokens
    assert bool((targets[mask] >= T.VALUE_START).all())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.seq_len}")
def test_same_seed_same_batch_other_seed_differs(spec):
    a = T.make_batch(spec, 4, _gen(7))
    b = T.make_batch(spec, 4, _gen(7))
    c = T.make_batch(spec, 4, _gen(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_mqar_every_query_answerable_from_context_and_no_leak():
    spec = T.MQARSpec(seq_len=64, num_kv_pairs=8)
    inputs, targets, mask = T.make_batch(spec, 16, _gen(1))
    n = spec.num_kv_pairs
    for b in range(16):
        context = inputs[b, :2 * n].tolist()
        keys, values = context[0::2], context[1::2]
        assert len(set(keys)) == n                          # distinct keys
        assert all(T.KEY_START <= k < T.KEY_START + T.KEY_COUNT for k in keys)
        queried = mask[b].nonzero().flatten().tolist()
        assert len(queried) == n                            # every key asked exactly once
        assert sorted(inputs[b, queried].tolist()) == sorted(keys)
        for t in queried:
            assert t >= 2 * n
            assert targets[b, t] == values[keys.index(int(inputs[b, t]))]
        # no value token anywhere in the query region: the answer is only in the context
        assert not bool((inputs[b, 2 * n:] >= T.VALUE_START).any())


def test_mqar_gaps_follow_power_law():
    spec = T.MQARSpec(seq_len=256, num_kv_pairs=4)
    _, _, mask = T.make_batch(spec, 2000, _gen(2))
    region = mask[:, 2 * spec.num_kv_pairs::2].float().mean(0)
    slots = region.numel()
    assert region[: slots // 4].mean() > 2 * region[-slots // 4:].mean()


def test_selective_copy_answers_are_the_hidden_tokens_in_order():
    spec = T.SelectiveCopySpec(seq_len=40, num_tokens=6, num_values=4)
    inputs, targets, mask = T.make_batch(spec, 16, _gen(3))
    ctx = spec.seq_len - spec.num_tokens
    for b in range(16):
        context = inputs[b, :ctx]
        hidden = context[context != T.BLANK].tolist()
        assert len(hidden) == spec.num_tokens
        assert targets[b, mask[b]].tolist() == hidden
        assert mask[b].nonzero().flatten().tolist() == list(range(ctx, spec.seq_len))
        # after the copy mark the model only reads answers it has already been scored on
        assert int(inputs[b, ctx]) == T.COPY_MARK
        assert inputs[b, ctx + 1:].tolist() == hidden[:-1]
        assert T.COPY_MARK not in context.tolist()


def test_noisy_recall_scores_only_keys_seen_before_with_their_value():
    spec = T.NoisyRecallSpec(seq_len=80, num_keys=5, noise_frac=0.3)
    inputs, targets, mask = T.make_batch(spec, 16, _gen(4))
    noise_pairs = 0
    for b in range(16):
        seq = inputs[b].tolist()
        bound = {}
        for p in range(0, spec.seq_len - 1, 2):
            k, v = seq[p], seq[p + 1]
            if T.NOISE_START <= k < T.NOISE_START + T.NOISE_COUNT:
                noise_pairs += 1
                assert not mask[b, p]
                continue
            assert T.KEY_START <= k < T.KEY_START + T.KEY_COUNT
            if k in bound:
                assert bound[k] == v                        # one mapping per sequence
                assert mask[b, p] and targets[b, p] == v    # scored, answer shown earlier
            else:
                assert not mask[b, p]                       # first sighting: unanswerable, unscored
                bound[k] = v
        assert len(bound) <= spec.num_keys
        assert not bool(mask[b, 1::2].any())                # values positions never scored
    total_pairs = 16 * (spec.seq_len // 2)
    assert 0.15 < noise_pairs / total_pairs < 0.45


@pytest.mark.parametrize("bad", [
    dict(kind="mqar", seq_len=16, num_kv_pairs=8),
    dict(kind="mqar", seq_len=64, num_kv_pairs=8, num_keys=4),
    dict(kind="mqar", seq_len=64, num_values=65),
    dict(kind="selective_copy", seq_len=10, num_tokens=6),
    dict(kind="noisy_recall", noise_frac=1.0),
    dict(kind="lm", seq_len=1),
    dict(kind="mqar", bogus=1),
])
def test_bad_specs_raise_value_error(bad):
    from pydantic import TypeAdapter
    with pytest.raises(ValueError):
        TypeAdapter(T.TaskSpec).validate_python(bad)


def test_make_batch_checks_arguments():
    with pytest.raises(ValueError, match="corpus"):
        T.make_batch(T.LMSpec(seq_len=16), 2, _gen())
    with pytest.raises(ValueError, match="batch"):
        T.make_batch(T.MQARSpec(), 0, _gen())


def test_context_candidates_count_the_answers_a_context_offers():
    mqar = T.MQARSpec(seq_len=32, num_kv_pairs=4, num_values=16)
    assert T.context_candidates(mqar) == 4
    assert T.context_candidates(T.MQARSpec(seq_len=32, num_kv_pairs=8, num_values=3)) == 3
    assert T.context_candidates(T.NoisyRecallSpec(seq_len=32, num_keys=4)) == 4
    assert T.context_candidates(T.SelectiveCopySpec(seq_len=32, num_tokens=5)) == 5
    # and no answer lies outside them: every MQAR target is one of its sequence's context values
    inputs, targets, mask = T.make_batch(mqar, 16, torch.Generator().manual_seed(0))
    for row in range(16):
        values = set(inputs[row, 1:2 * mqar.num_kv_pairs:2].tolist())
        assert set(targets[row][mask[row]].tolist()) <= values and len(values) <= T.context_candidates(mqar)
    with pytest.raises(ValueError, match="not a recall task"):
        T.context_candidates(T.LMSpec(seq_len=32))
