"""Speed settings resolved for a device: mixed precision, torch.compile, channels-last memory.

Defaults (``train.amp: auto``, ``train.compile`` / ``train.channels_last`` unset):

* CPU: everything off. bf16 autocast on a CPU without native bf16 matrix units is ~14x slower
  than float32 (AVX2 machine, bench/train_step.py); channels-last helps at small widths
  (1.04-1.19x at width 0.25, 96x128) but not at full width (MTAN 0.97x), so it is opt-in:
  ``train.channels_last=true``.
* CUDA: bf16 autocast (when the GPU supports bf16: tensor cores, no loss scaling needed) and
  channels-last (NHWC is cuDNN's native layout for bf16 convolutions). Without bf16 support,
  autocast stays off: fp16 is available as ``train.amp=fp16`` with a gradient scaler.
* torch.compile is opt-in everywhere: compiling the SegNet-based networks takes minutes, again
  after every train/eval switch and for every new input size, and gradient methods in
  representation mode call ``encode``/``decode`` directly, outside the compiled forward.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch

from mtlkit.config import Config
from mtlkit.errors import ConfigError


@dataclass(frozen=True)
class Speed:
    """The resolved settings: autocast dtype (None = float32), compile, channels-last."""

    autocast_dtype: torch.dtype | None
    compile: bool
    channels_last: bool


def speed_settings(cfg: Config, device: torch.device) -> Speed:
    """``auto``/None settings: bf16 autocast and channels-last on CUDA, all off on CPU; compile opt-in."""
    cuda = device.type == "cuda"
    amp = cfg.train.amp
    if amp == "auto":
        amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "off"
    if amp == "fp16" and not cuda:
        raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    channels_last = cuda if cfg.train.channels_last is None else cfg.train.channels_last
    compile_ = False if cfg.train.compile is None else cfg.train.compile
    if compile_:
        check_compile(device)
    return Speed(dtype, compile_, channels_last)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here (None when it can)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"
    return None


def check_compile(device: torch.device) -> None:
    """Raise a ConfigError naming ``train.compile`` when torch.compile cannot run on ``device``."""
    reason = compile_unavailable(device)
    if reason is not None:
        raise ConfigError(f"train.compile: {reason}; set train.compile=false")
