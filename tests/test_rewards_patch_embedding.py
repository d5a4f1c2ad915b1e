"""ViT patch embeddings as matmuls (`unbottle.rewards.patch_embedding`): the same outputs and pixel gradients."""

from __future__ import annotations

import pytest
import torch

from unbottle.rewards.patch_embedding import PatchConv2d, patch_embeddings_as_matmuls


@pytest.mark.parametrize("bias, kernel, size", [(False, 14, (224, 224)), (True, 16, (64, 48)), (False, 4, (30, 30))])
def test_patch_conv_matches_the_convolution_and_its_gradients(bias, kernel, size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 32, kernel, stride=kernel, bias=bias).double()
    fast = torch.nn.Conv2d(3, 32, kernel, stride=kernel, bias=bias).double()
    fast.load_state_dict(conv.state_dict())
    assert patch_embeddings_as_matmuls(fast) == 1 and type(fast) is PatchConv2d
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    x_fast = x.detach().clone().requires_grad_(True)
    ref, out = conv(x), fast(x_fast)  # 30 px with kernel 4: a ragged border, the convolution's own path
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    cotangent = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, x, cotangent)
    (g_fast,) = torch.autograd.grad(out, x_fast, cotangent)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-10)
    assert fast.state_dict().keys() == conv.state_dict().keys()  # checkpoints load as before


def test_only_non_overlapping_unpadded_convolutions_switch():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 14, stride=14),  # a patch embedding: switched
        torch.nn.Conv2d(8, 8, 3, padding=1),  # overlapping: kept
        torch.nn.Conv2d(8, 8, 2, stride=2, padding=1),  # padded: kept
        torch.nn.Conv2d(8, 8, 2, stride=2, groups=2),  # grouped: kept
    )
    assert patch_embeddings_as_matmuls(model) == 1
    assert [type(m) for m in model] == [PatchConv2d] + [torch.nn.Conv2d] * 3
    assert patch_embeddings_as_matmuls(model) == 0  # idempotent
