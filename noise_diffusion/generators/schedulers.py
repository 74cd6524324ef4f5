"""The deterministic samplers the replay needs, chosen from a checkpoint's own scheduler config."""

from __future__ import annotations

from ..errors import UserError


def unet_scheduler(pipe_scheduler, choice: str):
    """Scheduler class and config for an epsilon-prediction UNet: ``"ddim"`` (η = 0, built from the checkpoint's config
    with ``clip_sample`` forced off — clipping x0 inside the step would zero the replay gradient) or ``"default"``
    (the checkpoint's own, which must be deterministic)."""
    from diffusers import DDIMScheduler

    if choice == "ddim":
        return DDIMScheduler, DDIMScheduler.from_config(pipe_scheduler.config, clip_sample=False).config
    if choice == "default":
        if pipe_scheduler.config.get("s_churn", 0.0):
            raise UserError("the checkpoint's scheduler adds noise (s_churn > 0); the replay needs a deterministic one")
        return type(pipe_scheduler), pipe_scheduler.config
    raise UserError(f"unknown scheduler {choice!r}; choose from ddim, default")


def check_deterministic(scheduler_class: type, num_steps: int) -> None:
    """Refuse an ancestral sampler (SDXL-Turbo ships Euler ancestral) where it adds noise: it adds
    ``sigma_up * noise`` after every step, with ``sigma_up = 0`` only at the last one (it lands on sigma 0), so a
    1-step pass is deterministic, and equals plain Euler, while longer passes are not, and the replay needs them to be."""
    if "Ancestral" in scheduler_class.__name__ and num_steps > 1:
        raise UserError(f"the checkpoint's {scheduler_class.__name__} adds noise at every step but the last, so "
                        f"{num_steps} steps cannot be replayed: use 1 step or --scheduler ddim")


def flow_scheduler(pipe_scheduler, choice: str | None):
    """The flow-matching Euler scheduler of an SD3/FLUX checkpoint: their one deterministic sampler, selected by both
    ``"ddim"`` (the command-line default) and ``"default"``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if choice not in (None, "ddim", "default"):
        raise UserError(f"unknown scheduler {choice!r}; flow-matching models use their own Euler scheduler")
    config = FlowMatchEulerDiscreteScheduler.from_config(pipe_scheduler.config).config
    if config.get("stochastic_sampling"):
        raise UserError("the checkpoint's scheduler samples stochastically; the replay needs a deterministic one")
    return FlowMatchEulerDiscreteScheduler, config


def resolution_shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """The flow-matching pipelines' resolution-dependent timestep shift ``mu`` (diffusers' ``calculate_shift``, the
    same function in the SD3 and FLUX pipelines) from the scheduler config; ``max_shift`` is the family's default
    where the config has none (1.16 for SD3, 1.15 for FLUX)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", max_shift))
