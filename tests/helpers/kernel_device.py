"""Where the kernel tests run: the CPU with Triton's interpreter (CI), or a CUDA GPU when TIDE_TEST_DEVICE=cuda
(`TIDE_TEST_DEVICE=cuda pytest tests/kernels/test_attention.py tests/kernels/test_elementwise.py
tests/kernels/test_engine_triton.py` on a GPU machine). Test inputs are drawn on the CPU from seeded generators and
moved, so both places check the same numbers; references are computed on the CPU in float64."""
from __future__ import annotations

import os

import torch

DEVICE = torch.device(os.environ.get("TIDE_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
# The interpreter gets bf16 wrong, so the Triton kernels are checked in bf16 only on a GPU.
TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
