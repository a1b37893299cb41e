"""Packed proxy steps (ProxySpec.pack_tasks): right-padding a task batch must never change what the
model computes at its real positions, for every mechanism, so that one padded forward per step gives
each task the loss it had alone."""
import pytest
import torch

from attnsearch.evaluators import tasks as T
from attnsearch.evaluators.proxy import proxy_arch
from attnsearch.evaluators.quality import ProxySpec, _packed, _packed_step, _masked_loss, _scored
from attnsearch.models import build_model
from attnsearch.space.arch import ArchConfig, LayerSpec
from attnsearch.space.catalogue import MECHANISMS

REAL, PADDED = 24, 64


def _tiny_model(mechanism: str, seq_len: int = PADDED):
    arch = ArchConfig(d_model=256, n_layers=2, n_heads=4, head_dim=64, max_seq_len=4096,
                      layers=[LayerSpec(mechanism=mechanism), LayerSpec(mechanism="full")])
    parch = proxy_arch(arch, d_model=32, n_layers=2, n_heads=2, head_dim=16, seq_len=seq_len,
                       vocab_size=T.VOCAB_SIZE)
    torch.manual_seed(0)
    return build_model(parch).double().eval()


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_padding_never_reaches_real_positions(mechanism):
    model = _tiny_model(mechanism)
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, T.VOCAB_SIZE, (2, REAL), generator=gen)
    pads = [torch.randint(0, T.VOCAB_SIZE, (2, PADDED - REAL), generator=gen) for _ in range(2)]
    with torch.no_grad():
        a, b = (model(torch.cat([real, pad], dim=1))[:, :REAL] for pad in pads)
    assert torch.allclose(a, b, rtol=0, atol=1e-10), f"{mechanism}: padding content changed real positions"


def test_packed_step_gives_each_task_its_own_loss():
    spec = ProxySpec()
    model = _tiny_model("mamba2", spec.seq_len)
    gens = {n: torch.Generator().manual_seed(i) for i, n in enumerate(["mqar", "noisy_recall"])}
    batches = [T.make_batch(spec.tasks[n], 4, gens[n]) for n in gens]
    cpu = torch.device("cpu")
    packed = _packed_step(model, batches, spec.seq_len, [0.5, 0.5], cpu)
    for batch, got in zip(batches, packed):
        inputs, positions, wanted = _scored(batch, cpu)
        padded = torch.nn.functional.pad(inputs, (0, spec.seq_len - inputs.shape[1]), value=T.FILLER)
        alone = _masked_loss(model(padded), *_packed([batch], spec.seq_len)[1][0])
        assert torch.allclose(got, alone.detach(), rtol=1e-10, atol=0)
    # the gradient is the weighted sum of the tasks' own gradients
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for batch in batches:
        inputs, scored = _packed([batch], spec.seq_len)
        (_masked_loss(model(inputs), *scored[0]) * 0.5).backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-8, atol=1e-12)


def test_packed_rows_and_positions():
    spec = ProxySpec()
    gen = torch.Generator().manual_seed(3)
    batches = [T.make_batch(spec.tasks["mqar"], 3, gen), T.make_batch(spec.tasks["noisy_recall"], 2, gen)]
    inputs, scored = _packed(batches, 64)
    assert inputs.shape == (5, 64)
    for (inp, tgt, mask), (positions, wanted), row0 in zip(batches, scored, (0, 3)):
        n, length = inp.shape
        assert torch.equal(inputs[row0:row0 + n, :length], inp)
        assert (inputs[row0:row0 + n, length:] == T.FILLER).all()
        assert torch.equal(wanted, tgt[mask])
        rows, cols = positions // 64, positions % 64
        assert rows.min() >= row0 and rows.max() < row0 + n and cols.max() < length
        assert torch.equal(inputs.reshape(-1)[positions], inp[mask])
