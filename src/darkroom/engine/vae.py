"""The VAE's decode as darkroom runs it: one latent at a time, and two faster forms of the same
computation for a picture (one frame): its causal 3D convolutions as 2D ones, and on a CPU its
RMS norms as sums of squares."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from darkroom.engine.wrappers import wrap


def decode_one_at_a_time(vae: torch.nn.Module) -> None:
    """Make the VAE decode each latent of a batch alone, so its bytes do not depend on the batch."""
    original = vae.decode

    def run(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if z.shape[0] == 1:
            return original(z, *args, **kwargs)
        return (torch.cat([original(z[i : i + 1], *args, **kwargs)[0] for i in range(z.shape[0])]),)

    wrap(vae, "decode", run, original)


def _rms_norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """QwenImageRMS_norm's computation with the vector norm written as a sum of squares."""
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    y = x.float() if low_precision else x
    dim = 1 if self.channel_first else -1
    normalized = y / (y * y).sum(dim, keepdim=True).sqrt().clamp_min(1e-12)  # F.normalize's eps
    return normalized.to(x.dtype) * self.scale * self.gamma + self.bias


def fast_cpu_norms(vae: torch.nn.Module) -> int:
    """On a CPU, give the VAE's RMS norms a faster form of the same computation.

    torch's CPU `linalg_vector_norm` over the channel dimension of a (B, C, T, H, W) tensor runs
    about 60x slower than summing squares (190 ms against 3 ms for 4 x 1024 x 1024 here): half
    of a VAE decode. Same result up to float rounding; GPUs keep diffusers' code.
    """
    patched = 0
    for module in vae.modules():
        if type(module).__name__ == "QwenImageRMS_norm":
            wrap(module, "forward", functools.partial(_rms_norm_forward, module), module.forward)
            patched += 1
    return patched


def one_frame_convs_2d(vae: torch.nn.Module) -> int:
    """Run the VAE's causal 3D convolutions of a single frame as the 2D convolutions they are.

    Krea 2's VAE (Qwen-Image's, built for video) decodes a picture as a one-frame video: each
    causal 3D convolution pads the time axis with `kernel - 1` zero frames in front of the one
    real frame, so of its kernel's time slices only the last ever meets data. That slice as a 2D
    convolution is the same sum without the products with zeros: a third of the arithmetic for
    the 3x3x3 kernels, and 2D kernels, which are better tuned than 3D ones on every backend (on
    torch's CPU build, 3D convolutions take a slow generic path). Frames with a cache from
    earlier frames (video), strides or dilation in time keep diffusers' code. Returns how many
    convolutions were wrapped.
    """
    patched = 0
    for module in vae.modules():
        if type(module).__name__ != "QwenImageCausalConv3d":
            continue
        kernel_t = module.kernel_size[0]
        if module.stride[0] != 1 or module.dilation != (1, 1, 1) or module.groups != 1:
            continue
        if module._padding[4] != kernel_t - 1:  # the causal padding: kernel - 1 frames in front
            continue
        forward = module.forward
        one_frame = functools.partial(_one_frame, module, forward, last=_LastSlice())
        wrap(module, "forward", one_frame, forward)
        patched += 1
    return patched


class _LastSlice:
    """A causal convolution's last time slice as a contiguous 2D weight, made once and made
    again only when the weight itself changes (moved by offload, or replaced)."""

    __slots__ = ("_key", "_weight")

    def __init__(self) -> None:
        self._key: tuple[int, torch.device, torch.dtype] | None = None
        self._weight: torch.Tensor | None = None

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight.device, weight.dtype)
        if self._weight is None or key != self._key:
            self._weight = weight[:, :, -1].contiguous()
            self._key = key
        return self._weight


def _one_frame(
    conv: Any,
    forward: Any,
    x: torch.Tensor,
    cache_x: torch.Tensor | None = None,
    *,
    last: _LastSlice,
) -> torch.Tensor:
    if x.shape[2] != 1 or cache_x is not None:
        return forward(x, cache_x)
    left, right, top, bottom = conv._padding[:4]
    weight = last.of(conv.weight)
    stride = conv.stride[1:]
    if left == right and top == bottom:
        # Zero padding inside the convolution: no padded copy of the activation.
        out = F.conv2d(x[:, :, 0], weight, conv.bias, stride=stride, padding=(top, left))
    else:
        frame = F.pad(x[:, :, 0], (left, right, top, bottom))
        out = F.conv2d(frame, weight, conv.bias, stride=stride)
    return out.unsqueeze(2)
