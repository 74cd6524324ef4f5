"""Train the toy world from scratch on a CPU: the digit verifiers, the VAE, then the text encoder + UNet.

Usage (the run that made the shipped folder; times in ``docs/toy_world.md``)::

    OMP_NUM_THREADS=1 python -m noise_diffusion.toy.training.digits --work runs/toy_train --install

Each component is written to ``--work`` as soon as it is done and skipped when it already exists there, so an
interrupted run resumes; ``--install`` copies the finished pipeline and verifiers into the package's ``assets``. Every
component is seeded (torch and numpy). The UNet trains in two stages (2,000 + 3,000 steps by default, each with its own
learning-rate cycle); the shipped run trained the verifiers in one process while the VAE and then the UNet trained in
another (``--only verifiers`` / ``--only vae`` / ``--only unet``).
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
from torch import nn
from torch.nn import functional as F

from .. import models, world
from .steps import denoising_step, ema_update, encode_canvases, joint_optimiser, training_batch

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PIPELINE_NAME = "toy-digits"
#: the world's recommended sampling settings, read by ``generators.sampling_defaults``
SAMPLING = {"num_steps": 25, "guidance_scale": 5.0}
#: verifier name -> (architecture, digit half, seed offset, augmentation): the guide sees half "a", the judges half "b"
VERIFIER_RECIPES = {
    "toy-digits-cnn": ("cnn", "a", 0, False),
    "toy-digits-heldout": ("mlp", "b", 1, False),
    "toy-digits-heldout-resnet": ("resnet", "b", 2, True),
}
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


# -- verifiers ----------------------------------------------------------------------------------------------------------
def box_batch(count: int, half: str, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled 16x16 crops of the nominal boxes of random canvases (class 10 = no digit in the box).

    Positives are cut from full canvases of the world (so they carry the jitter and the neighbour's overlap); negatives
    are boxes whose digit was left out, noise, or two different digits blended together.
    """
    configs = [world.configurations()[i] for i in rng.integers(0, 180, size=count)]
    canvases = world.sample_canvases(configs, rng, half=half)[:, 0]
    slot = rng.integers(0, 2, size=count)
    labels = np.array([c[1 + s] for c, s in zip(configs, slot)])
    kind = rng.random(count)
    images, image_labels = world.digits(half)
    blank = np.zeros((16, 16), np.float32)
    boxes = np.empty((count, 16, 16), dtype=np.float32)
    for i, (layout, first, second) in enumerate(configs):
        canvas = canvases[i]
        top, left = world.BOXES[layout][slot[i]]
        if kind[i] < 0.10:  # this box's digit left out: empty apart from what bleeds in from the neighbour
            other = images[rng.integers(len(images))]
            pair = (other, blank) if slot[i] else (blank, other)
            canvas = world.render(layout, *pair, tuple(int(v) for v in rng.integers(-2, 3, size=4)))
            labels[i] = 10
        elif kind[i] < 0.15:  # noise of random strength
            canvas = np.clip(rng.random((32, 32)).astype(np.float32) * rng.random() * 1.5, 0, 1)
            labels[i] = 10
        elif kind[i] < 0.20:  # two digits drawn over each other: not one faithful digit
            a, b = rng.integers(len(images), size=2)
            canvas = np.zeros((32, 32), np.float32)
            canvas[top : top + 16, left : left + 16] = np.maximum(images[a], images[b])
            labels[i] = 10 if image_labels[a] != image_labels[b] else image_labels[a]
        boxes[i] = canvas[top : top + 16, left : left + 16]
    # mild photometric changes, as a generator's images are softer than the data
    boxes = boxes * rng.uniform(0.6, 1.0, size=(count, 1, 1)).astype(np.float32)
    boxes = boxes + rng.normal(0, 0.05, size=boxes.shape).astype(np.float32) * rng.random((count, 1, 1))
    return torch.from_numpy(np.clip(boxes, 0, 1).astype(np.float32))[:, None], torch.from_numpy(labels)


def augment_boxes(boxes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random geometry and softness per box: rotation up to 15 degrees, scale 0.85-1.15, shift up to 1.5 px, and on
    half of the boxes a Gaussian blur (sigma 0.3-1.0), as generated digits are rotated, resized and smeared."""
    count = len(boxes)
    angle = np.deg2rad(rng.uniform(-15, 15, count))
    scale = rng.uniform(0.85, 1.15, count)
    shift = rng.uniform(-1.5, 1.5, (count, 2)) * 2 / world.DIGIT  # pixels -> normalised coordinates
    theta = np.zeros((count, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = np.cos(angle) / scale, -np.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = np.sin(angle) / scale, np.cos(angle) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.from_numpy(theta), list(boxes.shape), align_corners=False)
    moved = F.grid_sample(boxes, grid, padding_mode="zeros", align_corners=False)
    sigma = torch.from_numpy(np.where(rng.random(count) < 0.5, rng.uniform(0.3, 1.0, count), 1e-3).astype(np.float32))
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel_1d = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel_1d = kernel_1d / kernel_1d.sum(1, keepdim=True)
    kernels = (kernel_1d[:, :, None] * kernel_1d[:, None, :])[:, None]  # [N, 1, 5, 5]
    blurred = F.conv2d(moved.view(1, count, *boxes.shape[-2:]), kernels, padding=2, groups=count)
    return blurred.view_as(boxes).clamp(0, 1)


def train_verifier(
    kind: str, half: str, steps: int, seed: int, batch: int = 128, eval_count: int = 2000, augment: bool = False
) -> tuple[nn.Module, dict]:
    """Train one digit classifier on half ``half`` of the digits; report its accuracy on the other half.

    ``augment`` adds :func:`augment_boxes` to every training batch (not to the evaluation boxes)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = models.VERIFIERS[kind]()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        boxes, labels = box_batch(batch, half, rng)
        if augment:
            boxes = augment_boxes(boxes, rng)
        loss = F.cross_entropy(net(boxes), labels, label_smoothing=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0:
            _log(f"verifier {kind} step {step} loss {loss.item():.3f}")
    net.eval()
    other = "b" if half == "a" else "a"
    with torch.no_grad():
        boxes, labels = box_batch(eval_count, other, np.random.default_rng(seed + 1))
        accuracy = (net(boxes).argmax(1) == labels).float().mean().item()
    return net, {"kind": kind, "half": half, "steps": steps, "seed": seed, "augment": augment,
                 "box_accuracy_other_half": accuracy}


# -- VAE ----------------------------------------------------------------------------------------------------------------
def train_vae(steps: int, seed: int, batch: int = 32, kl_weight: float = 1e-5, lr: float = 2e-3):
    """AutoencoderKL 32x32x3 -> 8x8x4 on canvases of the training configurations (inputs in [-1, 1])."""
    torch.manual_seed(seed)
    vae = models.build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    canvases, _ = world.sample_training_set(batch * steps // 4, seed)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        x = torch.from_numpy(canvases[rng.integers(0, len(canvases), size=batch)]) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            _log(f"vae step {step} loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():  # SD convention: latents * scaling_factor have unit variance
        x = torch.from_numpy(world.sample_training_set(512, seed + 1)[0]) * 2 - 1
        std = vae.encode(x).latent_dist.mean.std().item()
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        error = F.l1_loss(recon, x).item() / 2
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, {"steps": steps, "seed": seed, "batch": batch, "latent_std": std, "recon_l1_01": error}


# -- text encoder + UNet ------------------------------------------------------------------------------------------------
def encode_dataset(vae, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Posterior means and stds of ``count`` training canvases, with their configurations (prompt chosen per step)."""
    rng = np.random.default_rng(seed)
    train = world.training_configurations()
    configs = [train[i] for i in rng.integers(0, len(train), size=count)]
    means, stds = encode_canvases(vae, torch.from_numpy(world.sample_canvases(configs, rng)) * 2 - 1)
    return means, stds, configs


def train_unet(
    vae, steps: int, seed: int, batch: int = 64, count: int = 20000, cfg_dropout: float = 0.1, width: int = 32,
    snapshot=None, snapshot_every: int = 250, init: tuple | None = None,
):
    """Train a fresh CLIP text encoder and UNet jointly (epsilon prediction, SD1.x betas, CFG dropout), with EMA.

    ``init=(unet, text_encoder, tokenizer)`` continues from trained weights instead (a second stage with its own
    learning-rate cycle and fresh canvases from ``seed``).

    ``snapshot(unet, text_encoder, tokenizer, step)`` is called with the EMA weights every ``snapshot_every`` steps, so
    that a run cut short still leaves a usable (if less trained) pipeline.
    """
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if init is None:
        with tempfile.TemporaryDirectory() as tok_dir:
            tokenizer = CLIPTokenizer.from_pretrained(models.write_word_tokenizer(tok_dir))
        text_encoder = CLIPTextModel(models.text_encoder_config(len(tokenizer)))
        unet = models.build_unet(width)
    else:
        unet, text_encoder, tokenizer = init
        unet.train().requires_grad_(True)
        text_encoder.train().requires_grad_(True)
    ema = copy.deepcopy((unet, text_encoder))
    for module in ema:
        module.requires_grad_(False)
    noise_schedule = DDPMScheduler(**SD_BETAS)
    means, stds, configs = encode_dataset(vae, count, seed)
    scale = vae.config.scaling_factor
    params, optimizer, schedule = joint_optimiser(unet, text_encoder, 1e-3, steps)
    all_prompts = [world.prompts_for(*c) for c in configs]
    started = time.time()
    for step in range(steps):
        prompts, latents = training_batch(rng, (means, stds, scale), all_prompts, batch, cfg_dropout)
        loss = denoising_step(unet, text_encoder, tokenizer, noise_schedule, latents, prompts, params, optimizer)
        schedule.step()
        ema_update(ema, (unet, text_encoder), step)
        if snapshot is not None and step and step % snapshot_every == 0:
            snapshot(ema[0], ema[1], tokenizer, step)
        if step % 50 == 0:
            rate = (time.time() - started) / (step + 1)
            _log(f"unet step {step} loss {loss.item():.4f} ({rate:.2f} s/step, ~{rate * (steps - step) / 60:.1f} min left)")
    info = {"steps": steps, "seed": seed, "batch": batch, "dataset": count, "cfg_dropout": cfg_dropout, "width": width,
            "continued": init is not None}
    return ema[0], ema[1], tokenizer, info


def save_pipeline(folder: Path, unet, vae, text_encoder, tokenizer) -> Path:
    """A ``StableDiffusionPipeline`` folder with a DDIM scheduler (SD1.x betas) and the recommended settings."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    (folder / "noise_diffusion.json").write_text(json.dumps(SAMPLING, indent=1) + "\n", encoding="utf-8")
    return folder


# -- orchestration ------------------------------------------------------------------------------------------------------
def train_verifiers(work: Path, steps: int, seed: int, record) -> None:
    """Train every verifier of :data:`VERIFIER_RECIPES` not yet in ``work`` and save it there."""
    from safetensors.torch import save_file

    for name, (kind, half, seed_offset, augment) in VERIFIER_RECIPES.items():
        path = work / f"{name}.safetensors"
        if path.exists():
            continue
        start = time.time()
        net, info = train_verifier(kind, half, steps, seed + seed_offset, augment=augment)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"kind": kind})
        record(name, time.time() - start, info)


def parse_args(argv: list[str] | None = None):
    """The training command's flags."""
    from ...arguments import ArgumentParser, positive_int

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True,
                        help="folder for the trained components and timings.json; a re-run resumes what is done")
    parser.add_argument("--only", choices=("verifiers", "vae", "unet", "all"), default="all",
                        help="train only this part (default: %(default)s)")
    parser.add_argument("--verifier_steps", type=positive_int, default=1500,
                        help="training steps of each digit verifier (default: %(default)s)")
    parser.add_argument("--vae_steps", type=positive_int, default=500,
                        help="training steps of the autoencoder (default: %(default)s)")
    parser.add_argument("--unet_steps", type=positive_int, default=2000,
                        help="first-stage steps of the text encoder + UNet (default: %(default)s)")
    parser.add_argument("--unet_batch", type=positive_int, default=64,
                        help="canvases per UNet training step (default: %(default)s)")
    parser.add_argument("--unet_more_steps", type=int, default=3000,
                        help="a second UNet stage: continue from the first stage's weights for this many steps "
                             "(0: none; default: %(default)s)")
    parser.add_argument("--unet_dataset", type=positive_int, default=20000,
                        help="canvases drawn once for UNet training (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads; on a busy 2-core machine 1 is faster than 2 (default: %(default)s)")
    parser.add_argument("--install", action="store_true",
                        help="copy the results into the package's assets (noise_diffusion/toy/assets)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def record(name: str, seconds: float, info: dict) -> None:
        timings[name] = {"seconds": round(seconds, 1), **info}
        latest = json.loads(timings_file.read_text()) if timings_file.exists() else {}
        timings_file.write_text(json.dumps({**latest, name: timings[name]}, indent=1))
        _log(f"{name} done in {seconds / 60:.1f} min: {info}")

    if args.only in ("verifiers", "all"):
        train_verifiers(work, args.verifier_steps, args.seed, record)
    vae_dir = work / "vae"
    if args.only in ("vae", "all") and not (vae_dir / "config.json").exists():
        start = time.time()
        vae, info = train_vae(args.vae_steps, args.seed)
        vae.save_pretrained(vae_dir)
        record("vae", time.time() - start, info)
    pipe_dir = work / PIPELINE_NAME

    def snapshot(unet, text_encoder, tokenizer, step):
        from diffusers import AutoencoderKL

        save_pipeline(work / "snapshot", unet, AutoencoderKL.from_pretrained(vae_dir), text_encoder, tokenizer)
        (work / "snapshot" / "step.txt").write_text(f"{step}\n")

    if args.only in ("unet", "all") and not (pipe_dir / "model_index.json").exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_dir)
        start = time.time()
        unet, text_encoder, tokenizer, info = train_unet(
            vae, args.unet_steps, args.seed, batch=args.unet_batch, count=args.unet_dataset, snapshot=snapshot
        )
        save_pipeline(pipe_dir, unet, vae, text_encoder, tokenizer)
        record("unet_text_encoder", time.time() - start, info)
    final_dir = work / f"{PIPELINE_NAME}-stage2"
    if args.only in ("unet", "all") and args.unet_more_steps and not (final_dir / "model_index.json").exists():
        from diffusers import StableDiffusionPipeline

        stage1 = StableDiffusionPipeline.from_pretrained(pipe_dir, safety_checker=None, requires_safety_checker=False)
        start = time.time()
        unet, text_encoder, tokenizer, info = train_unet(
            stage1.vae, args.unet_more_steps, args.seed + 1, batch=args.unet_batch, count=args.unet_dataset,
            snapshot=snapshot, init=(stage1.unet, stage1.text_encoder, stage1.tokenizer),
        )
        save_pipeline(final_dir, unet, stage1.vae, text_encoder, tokenizer)
        record("unet_text_encoder_stage2", time.time() - start, info)
    if args.install:
        install(work)


def install(work: Path) -> None:
    """Copy the trained pipeline folder and verifier weights into ``noise_diffusion/toy/assets``."""
    ASSETS.mkdir(exist_ok=True)
    target = ASSETS / PIPELINE_NAME
    if target.exists():
        shutil.rmtree(target)
    stage2 = work / f"{PIPELINE_NAME}-stage2"
    shutil.copytree(stage2 if (stage2 / "model_index.json").exists() else work / PIPELINE_NAME, target)
    (ASSETS / "verifiers").mkdir(exist_ok=True)
    for name in VERIFIER_RECIPES:
        shutil.copy(work / f"{name}.safetensors", ASSETS / "verifiers" / f"{name}.safetensors")
    shutil.copy(work / "timings.json", ASSETS / "training_timings.json")
    _log(f"installed into {ASSETS}")


if __name__ == "__main__":
    main()
