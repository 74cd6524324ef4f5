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


def place_pipeline(
    pipe,
    device: str | torch.device,
    *,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    vae_checkpointing: bool = False,
    t5: torch.nn.Module | None = None,
    t5_device: str | torch.device | None = None,
) -> torch.device:
    """Move ``pipe`` to ``device`` (or set up model CPU offload onto it), freeze every module, apply the VAE options;
    put ``t5`` on ``t5_device`` when both are given. Returns the device the denoiser runs on."""
    device = torch.device(device)
    if cpu_offload and t5_device is not None:
        raise UserError("choose either cpu_offload or t5_device, not both")
    if cpu_offload:
        if device.type == "cpu":
            raise UserError("cpu_offload needs an accelerator device (e.g. cuda:0), got cpu")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if t5 is not None and t5_device is not None:
        t5.to(torch.device(t5_device))
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return device


def upcast_vae_if_needed(vae) -> None:
    """Keep a VAE that overflows in float16 (``force_upcast`` in its config, e.g. SDXL's) in float32, as diffusers'
    pipelines do before decoding; ``decode`` casts the latents to the VAE's dtype."""
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)


def memory_settings(cpu_offload: bool, vae_tiling: bool, vae_slicing: bool, vae_checkpointing: bool, **extra) -> dict:
    """The memory options for the result record."""
    return {"cpu_offload": cpu_offload, "vae_tiling": vae_tiling, "vae_slicing": vae_slicing,
            "vae_checkpointing": vae_checkpointing, **extra}
