"""examples/ddp_rms.py run by torchrun (2 CPU processes, gloo) equals one process on the full
batch: SynaPrune rms under DDP is the full batch's rms, to 1e-10 in float64."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_rms.py"
STEPS = 12


def _example():
    spec = importlib.util.spec_from_file_location("ddp_rms", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_equal_one_process_on_the_full_batch(tmp_path):
    out = tmp_path / "params.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(EXAMPLE),
           "--steps", str(STEPS), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    ddp = torch.load(out, weights_only=True)

    example = _example()
    model = example.get_problem(example.PROBLEM).build_model(0)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    example.train(model, steps=STEPS, batch_size=128)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float64
        # The same sums split over two ranks and added back: rounding only.
        torch.testing.assert_close(ddp[name], p.detach(), rtol=0, atol=1e-10)
        assert (p.detach() - start[name]).abs().max() > 1e-3  # the run moved
    # Rank 0's half of each batch alone takes other steps: the comparison tells them apart.
    half = example.get_problem(example.PROBLEM).build_model(0)
    example.train(half, steps=STEPS, batch_size=64)
    assert max((ddp[n] - p.detach()).abs().max() for n, p in half.named_parameters()) > 1e-6
