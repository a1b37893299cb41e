"""The mixers feed the Triton kernels inputs they accept (layout, contiguity, dtypes): whole
models on backend="triton" under TRITON_INTERPRET=1 match backend="torch". Run in a subprocess
because Triton binds kernels to the interpreter when their module is first imported."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from tiny_models import tiny_config, VOCAB
from attnsearch.models import build_model
for name in ("block_topk", "mamba2", "gated_deltanet"):
    torch.manual_seed(0)
    ref = build_model(tiny_config(name), backend="torch")
    tri = build_model(tiny_config(name), backend="triton")
    tri.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        diff = (ref(tokens) - tri(tokens)).abs().max().item()
    print(name, diff)
    assert diff < 1e-4, (name, diff)
"""


@pytest.mark.slow
def test_models_on_triton_interpreter_match_torch():
    here = str(Path(__file__).parent)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(here=here)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert len(done.stdout.split("\n")) >= 3
