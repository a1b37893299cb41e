"""Session-wide test settings.

Triton binds each @triton.jit function to the interpreter or the compiler when it is decorated,
so the choice must be made before any test module imports a Triton kernel: without a GPU, every
kernel runs under the interpreter (fp32 NumPy), which is how CI checks them.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
