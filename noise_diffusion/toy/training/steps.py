"""The denoiser-training pieces both toy worlds share: the encoded canvases, a batch of them with their prompts, the
joint optimiser of text encoder and UNet, one epsilon-prediction step and the EMA update."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import models


def encode_canvases(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoencoder's posterior means and stds of canvases in [-1, 1], in chunks that bound the memory."""
    means, stds = [], []
    with torch.no_grad():
        for chunk in pixels.split(256):
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def ema_update(ema, modules, step: int) -> None:
    """Move each EMA copy towards its module, with a decay that warms up to 0.999."""
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_module, module in zip(ema, modules):
            for p_ema, p in zip(ema_module.parameters(), module.parameters()):
                p_ema.lerp_(p, 1 - decay)


def training_batch(rng, latent_dist: tuple, all_prompts: list, batch: int, cfg_dropout: float):
    """``batch`` canvases drawn from the encoded set (``latent_dist`` = means, stds, VAE scale): one of each canvas's
    prompts, or the empty prompt with probability ``cfg_dropout``, and a latent sampled from its posterior."""
    means, stds, scale = latent_dist
    index = rng.integers(0, len(all_prompts), size=batch)
    prompts = ["" if rng.random() < cfg_dropout else all_prompts[i][rng.integers(0, 4)] for i in index]
    return prompts, (means[index] + stds[index] * torch.randn_like(means[index])) * scale


def joint_optimiser(unet, text_encoder, lr: float, steps: int):
    """(parameters, AdamW, one-cycle schedule) for training the text encoder and UNet together."""
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    return params, optimizer, schedule


def denoising_step(unet, text_encoder, tokenizer, noise_schedule, latents, prompts, params, optimizer) -> torch.Tensor:
    """One optimiser step of epsilon prediction on ``latents`` under ``prompts`` (gradient norm clipped to 1);
    returns the loss. Shared by both toy worlds' training."""
    ids = tokenizer(prompts, padding="max_length", max_length=models.MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (latents.shape[0],))
    pred = unet(noise_schedule.add_noise(latents, noise, t), t, encoder_hidden_states=text_encoder(ids)[0]).sample
    loss = F.mse_loss(pred, noise)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss
