"""Speed settings resolved for a device: mixed precision, torch.compile, channels-last memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlkit.config import Config
from mtlkit.errors import ConfigError


@dataclass(frozen=True)
class Speed:
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
    return Speed(dtype, compile_, channels_last)
