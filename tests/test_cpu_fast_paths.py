"""The CPU inference fast paths compute what the plain modules compute (rounding apart), in fp32
and bf16, and step aside where they must: autograd, fp16 and mixed dtypes, LoRA-wrapped layers,
changed weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selva_core.build import load_generator
from selva_core.lora import LoRAConfig, apply_lora
from selva_core.model.fused_cpu import cpu_inference_fast_path, linear_gelu
from selva_core.model.generator import PreprocessedConditions
from selva_core.model.layers import ChannelLastConv1d


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("kernel", "padding"), [(1, 0), (3, 1), (7, 3), (3, 0)])
def test_channel_last_conv_as_gemm_matches_the_convolution(kernel, padding):
    torch.manual_seed(0)
    conv = ChannelLastConv1d(48, 80, kernel, padding=padding, bias=kernel != 3)
    x = torch.randn(3, 37, 48)
    with torch.enable_grad():  # autograd keeps the convolution kernel
        reference = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=padding)
        assert conv(x).grad_fn is not None
    reference = reference.transpose(1, 2).detach()
    with torch.no_grad():
        assert conv._as_gemm(x)
        out = conv(x)
    assert out.shape == reference.shape
    assert _rel(out, reference) < 1e-6
    with torch.no_grad():
        assert not conv._as_gemm(x.double())  # other dtypes keep the convolution


def test_linear_gelu_matches_eager_and_follows_weight_changes():
    torch.manual_seed(0)
    fc = nn.Linear(64, 256)
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        assert _rel(linear_gelu(fc, x), F.gelu(fc(x))) < 1e-6
        fc.weight.mul_(-2.0)  # an in-place change (a LoRA merge, a load) must not hit a stale copy
        assert _rel(linear_gelu(fc, x), F.gelu(fc(x))) < 1e-6
    y = linear_gelu(fc, x.requires_grad_())
    y.sum().backward()  # the autograd path is the plain one
    assert x.grad is not None and fc.weight.grad is not None


def test_linear_gelu_on_a_layer_built_under_inference_mode():
    with torch.inference_mode():  # such weights have no version counter to key a cache on
        torch.manual_seed(0)
        fc = nn.Linear(64, 128)
        x = torch.randn(7, 64)
        assert _rel(linear_gelu(fc, x), F.gelu(fc(x))) < 1e-6
        fc.weight.mul_(3.0)
        assert _rel(linear_gelu(fc, x), F.gelu(fc(x))) < 1e-6


def test_linear_gelu_keeps_a_lora_wrapped_layer_on_its_own_forward():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.fc1 = nn.Linear(32, 64)
    apply_lora(model, LoRAConfig(rank=4, targets=("fc1",)))
    wrapped = model.fc1
    assert type(wrapped) is not nn.Linear
    with torch.no_grad():
        wrapped.lora_B["default"].normal_()  # a non-zero delta, so skipping it would show
    x = torch.randn(5, 32)
    with torch.no_grad():
        out = linear_gelu(wrapped, x)
        assert torch.equal(out, F.gelu(wrapped(x)))
        assert _rel(out, F.gelu(wrapped.base(x))) > 1e-3


def test_predict_flow_repeats_equals_the_repeated_latents():
    tiny = load_generator("tiny")
    g = torch.Generator().manual_seed(3)
    c = tiny.config
    clip_f = torch.randn(2, tiny.clip_seq_len, c.clip_dim, generator=g)
    sync_f = torch.randn(2, tiny.sync_seq_len, c.sync_dim, generator=g)
    text_f = torch.randn(2, c.text_seq_len, c.text_dim, generator=g)
    x = torch.randn(2, tiny.latent_seq_len, c.latent_dim, generator=g)
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        cond = tiny.preprocess_conditions(clip_f, sync_f, text_f)
        both = PreprocessedConditions.cat([cond, tiny.empty_conditions(2)])
        stacked = tiny.predict_flow(torch.cat([x, x]), torch.cat([t, t]), both)
        shared = tiny.predict_flow(x, t, both, repeats=2)
        assert _rel(shared, stacked) < 1e-5
        with pytest.raises(ValueError, match="expected 3 x the latent batch 2"):
            tiny.predict_flow(x, t, both, repeats=3)


def test_fast_paths_take_bf16_and_round_like_the_plain_kernels():
    """In bf16 both paths accumulate in fp32 and round once: against an fp32 reference the fast
    path is as close as the plain bf16 kernel (and its GELU, applied before rounding, closer)."""
    torch.manual_seed(0)
    conv = ChannelLastConv1d(48, 80, 7, padding=3).bfloat16()
    fc = nn.Linear(64, 256).bfloat16()
    x, xl = torch.randn(3, 37, 48).bfloat16(), torch.randn(2, 50, 64).bfloat16()
    with torch.no_grad():
        assert conv._as_gemm(x)
        ref = F.conv1d(x.float().transpose(1, 2), conv.weight.float(), conv.bias.float(), padding=3)
        ref = ref.transpose(1, 2)
        plain = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3).transpose(1, 2)
        out = conv(x)
        assert out.dtype == torch.bfloat16
        assert _rel(out.float(), ref) <= 1.5 * _rel(plain.float(), ref) + 1e-6
        assert _rel(out.float(), ref) < 1e-2
        ref = F.gelu(F.linear(xl.float(), fc.weight.float(), fc.bias.float()))
        fused = linear_gelu(fc, xl)
        assert fused.dtype == torch.bfloat16
        assert _rel(fused.float(), ref) <= 1.5 * _rel(F.gelu(fc(xl)).float(), ref) + 1e-6
        assert _rel(fused.float(), ref) < 1e-2
        # fp16 and mixed dtypes keep the plain kernels
        assert not conv._as_gemm(x.half())
        assert not conv._as_gemm(x.float())
        assert not cpu_inference_fast_path(xl.float(), fc.weight)
