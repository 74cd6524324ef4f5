"""Activation memory that the differentiable VAE decode keeps for the backward pass, with and without the generators'
``vae_checkpointing`` option. Computed on the ``meta`` device (shapes only: no weights, no arithmetic, a few seconds
on any machine) for the 4-level VAE that SD1.x/2.x/SDXL (4 latent channels) and SD3/FLUX (16) share.

    python benchmarks/vae_backward_memory.py --sizes 512 1024

Counts every activation tensor that autograd saves during ``vae.decode`` (weights excluded). With checkpointing the
peak is about the tensors saved outside the checkpointed blocks plus the largest block's, recomputed during backward.
The mid block's attention is counted as the math path stores it (the attention matrix); on a GPU with flash or
memory-efficient attention that part is smaller. A tensor saved by two operations counts twice, so the figures are
estimates on the high side: a real CPU decode + backward of one 256x256 image in float32 (random weights, one thread)
raised the peak resident memory by 1.15 GiB (0.78 GiB with checkpointing) where this count gives 1.49 (0.92).
"""

from __future__ import annotations

import argparse

import torch

GIB = 2**30


def build_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=latent_channels,
        )
    return vae.requires_grad_(False)


def saved_bytes(vae, pixels: int, dtype: torch.dtype, checkpointing: bool) -> tuple[int, dict[str, int]]:
    """Bytes saved for backward by one decode (total, and per decoder block)."""
    vae.to(dtype)
    if checkpointing:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()
    # meta tensors have no storage to compare: weights (saved by conv/linear backward) are recognised by their shapes,
    # which activations ([1, C, H, W] or [1, tokens, C]) never have
    weight_shapes = {tuple(p.shape) for p in vae.parameters()}
    total, per_block, current = [0], {}, [None]

    def pack(tensor):
        if tuple(tensor.shape) not in weight_shapes:
            size = tensor.numel() * tensor.element_size()
            total[0] += size
            if current[0] is not None:
                per_block[current[0]] = per_block.get(current[0], 0) + size
        return tensor

    blocks = [("mid", vae.decoder.mid_block)] + [(f"up{i}", b) for i, b in enumerate(vae.decoder.up_blocks)]
    hooks = []
    for name, block in blocks:
        hooks.append(block.register_forward_pre_hook(lambda m, a, n=name: current.__setitem__(0, n)))
        hooks.append(block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    channels = vae.config.latent_channels
    latents = torch.randn(1, channels, pixels // 8, pixels // 8, device="meta", dtype=dtype, requires_grad=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            vae.decode(latents)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0], per_block


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sizes in pixels")
    parser.add_argument("--latent_channels", type=int, default=16, help="4 (SD1.x/2.x/SDXL) or 16 (SD3/FLUX)")
    args = parser.parse_args(argv)
    vae = build_vae(args.latent_channels)
    print("dtype     size   saved for backward   with vae_checkpointing (outside blocks + largest block)")
    for dtype in (torch.float32, torch.bfloat16):
        for pixels in args.sizes:
            full, per_block = saved_bytes(vae, pixels, dtype, checkpointing=False)
            outside, _ = saved_bytes(vae, pixels, dtype, checkpointing=True)
            peak = outside + max(per_block.values())
            print(f"{str(dtype).removeprefix('torch.'):9s} {pixels:5d}  {full / GIB:8.2f} GiB         "
                  f"{peak / GIB:8.2f} GiB ({outside / GIB:.2f} + {max(per_block.values()) / GIB:.2f})")


if __name__ == "__main__":
    main()
