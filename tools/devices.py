"""Where torch runs: `auto` is CUDA when there is one; a device that is not there is refused
before any model is built, with the setting's name in the message."""

from __future__ import annotations

import torch


class DeviceUnavailable(RuntimeError):
    """The device named is not a torch device, or is not on this machine."""


def resolve_device(setting: str, *, name: str = "device") -> str:
    """`auto` as `cuda` or `cpu`; any other torch device as it is, if this machine has it.
    `name` is the setting the value came from, for the message."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError as error:
        raise DeviceUnavailable(f"{name} {setting!r} is not a torch device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"{name} is {setting!r} but CUDA is not available; use `auto` or `cpu`"
        )
    return str(device)
