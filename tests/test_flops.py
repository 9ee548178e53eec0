"""The FLOP counter of benchmarks/ (benchmarks/flops.py) against FLOPs written out by hand.

A convolution with C_in -> C_out channels, groups g, a k x k kernel and P output positions per image
costs 2 * N * P * C_out * (C_in / g) * k * k in the forward pass; its backward computes grad_input and
grad_weight, each the same multiply-adds again. A linear layer costs 2 * N * in * out forward, twice
that backward. torch's own FlopCounterMode counts the grouped backward g times too high: shown here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import count  # noqa: E402


def conv_forward(n, c_in, c_out, groups, k, h_out, w_out):
    return 2 * n * h_out * w_out * c_out * (c_in // groups) * k * k


@pytest.mark.parametrize("c_in, c_out, groups", [(16, 32, 1), (16, 32, 4), (32, 32, 32)])
def test_conv_forward_and_backward_with_groups(c_in, c_out, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, c_in, 12, 10, requires_grad=True)
    fwd = conv_forward(2, c_in, c_out, groups, 3, 12, 10)
    total, per_op = count(lambda: conv(x).sum().backward())
    assert per_op["convolution"] == fwd
    assert per_op["convolution_backward"] == 2 * fwd  # grad_input + grad_weight
    assert total == 3 * fwd
    x_frozen = x.detach()  # no grad_input: only grad_weight
    _, per_op = count(lambda: conv(x_frozen).sum().backward())
    assert per_op["convolution_backward"] == fwd


def test_torch_counter_overcounts_the_depthwise_backward():  # why benchmarks/flops.py exists
    conv = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    x = torch.randn(2, 32, 12, 10, requires_grad=True)
    mode = FlopCounterMode(display=False)
    with mode:
        conv(x).sum().backward()
    fwd = conv_forward(2, 32, 32, 32, 3, 12, 10)
    assert mode.get_total_flops() == fwd + fwd + 32 * fwd  # grad_weight counted 32 (= groups) times
    assert count(lambda: conv(x).sum().backward())[0] == 3 * fwd


def test_linear_forward_and_backward():
    lin = nn.Linear(24, 40)
    x = torch.randn(5, 24, requires_grad=True)
    total, _ = count(lambda: lin(x).sum().backward())
    assert total == 3 * (2 * 5 * 24 * 40)
