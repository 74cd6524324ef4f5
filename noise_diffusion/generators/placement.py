"""Where a diffusers pipeline's modules live, and the memory options of the larger families (SDXL, SD3, FLUX).

Loader options (``run.py`` flags of the same names, keyword arguments of ``load_generator``, or keys of a pipeline
folder's ``noise_diffusion.json``):

- ``cpu_offload``: diffusers' model CPU offload (``enable_model_cpu_offload``): every module waits in CPU memory and
  moves to the accelerator only while it runs. Peak GPU memory drops to the largest module plus activations, at the
  cost of a host-to-device copy per module call. Needs an accelerator device.
- ``vae_checkpointing``: gradient checkpointing in the VAE decoder (diffusers' ``enable_gradient_checkpointing``):
  the differentiable decode keeps only block boundaries for the backward pass and recomputes each block there. Exact
  (same images, same gradients); about halves the decode's backward memory (25.7 -> 14.7 GiB for one 1024x1024 image in
  float32, see ``benchmarks/vae_backward_memory.py``) for one extra decoder forward per gradient.
- ``vae_tiling``: decode tile by tile (diffusers' ``enable_tiling``; tiles are the VAE config's ``sample_size``, so it
  only acts above that size, e.g. above 1024 px for SDXL/SD3/FLUX). It saves memory in the no-gradient decodes; under
  autograd every tile's activations are kept for the backward pass, so it does *not* cut the gradient's memory, and
  tile seams change the image slightly.
- ``vae_slicing``: decode a batch one image at a time (no-gradient decodes; batches of several prompts).
- ``t5_device`` (SD3, FLUX): run the T5 text encoder on another device (e.g. ``"cpu"`` or a second GPU); prompts are
  encoded once per run, so a slow T5 costs little.
- ``drop_t5`` (SD3 only): load no T5 at all; its embeddings become zeros, as diffusers does with
  ``text_encoder_3=None`` (lower prompt faithfulness, ~9 GB less in fp16).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .settings import MemoryOptions


def place_pipeline(pipe, device: str | torch.device, memory: MemoryOptions) -> torch.device:
    """Move ``pipe`` to ``device`` (or set up model CPU offload onto it), freeze every module and apply the VAE options.
    Returns the device the denoiser runs on."""
    device = torch.device(device)
    if memory.cpu_offload:
        if device.type == "cpu":
            raise UserError("cpu_offload needs an accelerator device (e.g. cuda:0), got cpu")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
    if memory.vae_slicing:
        pipe.vae.enable_slicing()
    if memory.vae_checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return device


def place_t5(encoder: torch.nn.Module | None, t5_device: str | torch.device | None, memory: MemoryOptions) -> None:
    """Put a family's T5 text encoder on ``t5_device`` (SD3, FLUX); nothing when either is None."""
    if t5_device is None:
        return
    if memory.cpu_offload:
        raise UserError("choose either cpu_offload or t5_device, not both")
    if encoder is not None:
        encoder.to(torch.device(t5_device))


def upcast_vae_if_needed(vae) -> None:
    """Keep a VAE that overflows in float16 (``force_upcast`` in its config, e.g. SDXL's) in float32, as diffusers'
    pipelines do before decoding; ``decode`` casts the latents to the VAE's dtype."""
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
