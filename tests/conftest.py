"""Test-suite settings: one intra-op thread per test process.

The suite runs as two pytest-xdist workers on two cores; letting each also spawn a thread per
core oversubscribes the CPU and slows small kernels down by an order of magnitude.
"""
import torch

torch.set_num_threads(1)
