"""Train ``toy-digits-attn`` from scratch on a CPU: a text encoder that does not mix tokens, and a UNet that must read
each digit from its own token through cross-attention.

Usage (the run that made the shipped folder; times in ``docs/toy_world.md``)::

    OMP_NUM_THREADS=1 python -m noise_diffusion.toy.training.attn --work runs/toy_attn_train --install

The autoencoder is the shipped ``toy-digits`` one (same canvas) and the verifiers are that world's (same canvas and
language); only the text encoder and the UNet are trained here, jointly, seeded, with EMA weights saved every
``--snapshot_every`` steps so that an interrupted run leaves a usable pipeline.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import PIPELINE, models, world, world_attn
from .digits import SD_BETAS, save_pipeline
from .steps import denoising_step, ema_update, encode_canvases, joint_optimiser, training_batch

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PIPELINE_NAME = "toy-digits-attn"
#: the recommended sampling settings, read by ``generators.sampling_defaults``
SAMPLING = {"num_steps": 15, "guidance_scale": 5.0}
WIDTH = 32
#: attention heads per cross-attention layer (few, so that a head that binds a digit is not averaged away)
HEADS = 2


def text_encoder_config(vocab_size: int):
    """A CLIP text model with no transformer layer: each output is the layer-normed sum of its token's and its
    position's embedding, so a digit's identity exists only at the digit's own token."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=models.TEXT_HIDDEN, intermediate_size=2 * models.TEXT_HIDDEN,
        num_hidden_layers=0, num_attention_heads=4, max_position_embeddings=models.MAX_TOKENS,
        bos_token_id=512, eos_token_id=513, pad_token_id=513,
    )


def build_unet(width: int = WIDTH):
    """8x8 latents, cross-attention at 8x8 (where a digit covers 4x4 cells) and at 4x4, two heads per layer."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=models.TEXT_HIDDEN, attention_head_dim=HEADS, norm_num_groups=32,
    )


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def encode_dataset(vae, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """Posterior means and stds of ``count`` training canvases (ambiguous ones included), their configurations and
    ambiguity kinds."""
    rng = np.random.default_rng(seed)
    configs = world_attn.sample_training_configurations(count, rng)
    canvases, kinds = world_attn.sample_canvases(configs, rng)
    means, stds = encode_canvases(vae, torch.from_numpy(canvases) * 2 - 1)
    return means, stds, configs, kinds


def train(vae, steps: int, seed: int, batch: int = 64, count: int = 16000, cfg_dropout: float = 0.1,
          lr: float = 2e-3, snapshot=None, snapshot_every: int = 500):
    """Text encoder + UNet jointly (epsilon prediction, SD1.x betas, CFG dropout, one-cycle AdamW, EMA 0.999)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = CLIPTokenizer.from_pretrained(models.write_word_tokenizer(tok_dir))
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer)))
    unet = build_unet()
    ema = copy.deepcopy((unet, text_encoder))
    for module in ema:
        module.requires_grad_(False)
    noise_schedule = DDPMScheduler(**SD_BETAS)
    means, stds, configs, kinds = encode_dataset(vae, count, seed)
    scale = vae.config.scaling_factor
    params, optimizer, schedule = joint_optimiser(unet, text_encoder, lr, steps)
    all_prompts = [world.prompts_for(*c) for c in configs]
    started = time.process_time()
    for step in range(steps):
        prompts, latents = training_batch(rng, (means, stds, scale), all_prompts, batch, cfg_dropout)
        loss = denoising_step(unet, text_encoder, tokenizer, noise_schedule, latents, prompts, params, optimizer)
        schedule.step()
        ema_update(ema, (unet, text_encoder), step)
        if snapshot is not None and step and step % snapshot_every == 0:
            snapshot(ema[0], ema[1], tokenizer, step)
        if step % 50 == 0:
            rate = (time.process_time() - started) / (step + 1)
            _log(f"unet step {step} loss {loss.item():.4f} ({rate:.2f} CPU-s/step, ~{rate * (steps - step) / 60:.1f} "
                 f"CPU-min left)")
    info = {"steps": steps, "seed": seed, "batch": batch, "dataset": count, "cfg_dropout": cfg_dropout, "lr": lr,
            "width": WIDTH, "heads": HEADS, "text_layers": 0, "ambiguous": world_attn.AMBIGUOUS,
            "ambiguous_share_drawn": float(np.mean([k != "" for k in kinds]))}
    return ema[0], ema[1], tokenizer, info


def save(folder: Path, unet, vae, text_encoder, tokenizer) -> Path:
    save_pipeline(folder, unet, vae, text_encoder, tokenizer)
    (folder / "noise_diffusion.json").write_text(json.dumps(SAMPLING, indent=1) + "\n", encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> None:
    from diffusers import AutoencoderKL

    from ...arguments import ArgumentParser, positive_int

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the trained pipeline, snapshots and timings.json")
    parser.add_argument("--steps", type=positive_int, default=3000, help="training steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=64, help="canvases per step (default: %(default)s)")
    parser.add_argument("--dataset", type=positive_int, default=16000,
                        help="canvases drawn once and encoded (default: %(default)s)")
    parser.add_argument("--snapshot_every", type=positive_int, default=500,
                        help="save the EMA weights as a pipeline every this many steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--install", action="store_true",
                        help="copy the pipeline into the package's assets (noise_diffusion/toy/assets)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(PIPELINE / "vae")
    target = work / PIPELINE_NAME
    if not (target / "model_index.json").exists():
        def snapshot(unet, text_encoder, tokenizer, step):
            save(work / "snapshot", unet, vae, text_encoder, tokenizer)
            (work / "snapshot" / "step.txt").write_text(f"{step}\n")

        start = time.process_time()
        unet, text_encoder, tokenizer, info = train(vae, args.steps, args.seed, args.batch, args.dataset, lr=args.lr,
                                                    snapshot=snapshot, snapshot_every=args.snapshot_every)
        save(target, unet, vae, text_encoder, tokenizer)
        info["cpu_seconds"] = round(time.process_time() - start, 1)
        (work / "timings.json").write_text(json.dumps({"unet_text_encoder": info}, indent=1) + "\n")
        _log(f"done: {info}")
    if args.install:
        install(work)


def install(work: Path) -> None:
    """Copy the trained pipeline into ``noise_diffusion/toy/assets/toy-digits-attn`` with its timings; the UNet and
    autoencoder weights are stored at half precision (diffusers loads them into float32 models), halving the size."""
    from safetensors.torch import load_file, save_file

    destination = ASSETS / PIPELINE_NAME
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(work / PIPELINE_NAME, destination)
    for part in ("unet", "vae"):
        path = destination / part / "diffusion_pytorch_model.safetensors"
        save_file({k: v.half().contiguous() for k, v in load_file(str(path)).items()}, str(path))
    shutil.copy(work / "timings.json", ASSETS / "training_timings_attn.json")
    _log(f"installed into {destination}")


if __name__ == "__main__":
    main()
