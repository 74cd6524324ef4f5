"""Estimated GPU memory of SD1.4 + CLIP-FlanT5-XL/XXL for Noise Diffusion, without a GPU and without weights.

    python benchmarks/memory_estimate.py --json memory_estimate.json

An *estimate*, not a measurement: every model is built from its published configuration on PyTorch's ``meta`` device
(shapes only, no memory), so the parameter counts are exact for the architectures, and the activation memory that
backward needs is counted by running the differentiable part of an epoch (VAE decode, the VQA model's vision tower,
projector and FlanT5) on meta tensors and summing the tensors autograd saves (``saved_tensors_hooks``; weights and
repeated saves of one tensor are counted once). Not counted: the CUDA context and allocator fragmentation (~1 GiB),
cuDNN workspaces, and the no-grad UNet's transient activations (a few hundred MiB at batch 1 with SDPA attention);
``--allowance_gib`` adds a lump for them. Meta execution uses the eager attention of each model (T5 saves its attention
probabilities in float32), so the attention terms are upper bounds for memory-efficient kernels.
"""

from __future__ import annotations


import torch

import common  # noqa: F401  (puts the project on sys.path)
from noise_diffusion.cli import ArgumentParser  # noqa: E402
from common import CLIP_L336_VISION, CLIP_L_TEXT, FLAN_T5, SD14_UNET, SD14_VAE, user_error_exit, write_json

GIB = 2**30
BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
IMAGE_TOKENS = 576  # (336 / 14)^2 patch tokens of CLIP ViT-L/14-336
QUESTION_TOKENS = 40  # 'Does this figure show "{prompt}"? Please answer yes or no.' for a typical prompt


def _meta(build):
    with torch.device("meta"):
        module = build()
    return module.requires_grad_(False)


def sd14_modules():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    return {
        "unet": _meta(lambda: UNet2DConditionModel(**SD14_UNET)),
        "vae": _meta(lambda: AutoencoderKL(**SD14_VAE)),
        "text_encoder": _meta(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))),
    }


def clip_flant5_modules(size: str):
    """CLIP-FlanT5: CLIP ViT-L/14-336 vision tower, a 2-layer GELU MLP projector (1024 -> d -> d), FlanT5-``size``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5ForConditionalGeneration

    t5 = FLAN_T5[size]
    d = t5["d_model"]
    return {
        "vision": _meta(lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_L336_VISION))),
        "projector": _meta(lambda: torch.nn.Sequential(torch.nn.Linear(1024, d), torch.nn.GELU(), torch.nn.Linear(d, d))),
        "t5": _meta(lambda: T5ForConditionalGeneration(T5Config(**t5))),
    }


def parameters(modules: dict) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}


def saved_for_backward(modules, fn) -> int:
    """Bytes of the tensors autograd saves while ``fn()`` runs (parameters excluded, each tensor counted once)."""
    params = {id(p) for m in modules for p in m.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(x):
        base = x._base if x._base is not None else x
        if id(x) not in params and id(base) not in params and id(base) not in seen:
            seen[id(base)] = base  # keep it alive so that its id is not reused
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(t.numel() * t.element_size() for t in seen.values())


def vae_decode_activations(vae, batch: int, dtype, size: int = 512) -> int:
    vae = vae.to(dtype)
    latents = torch.zeros(batch, 4, size // 8, size // 8, device="meta", dtype=dtype, requires_grad=True)
    return saved_for_backward([vae], lambda: vae.decode(latents).sample)


def vqa_activations(modules: dict, batch: int, dtype) -> int:
    vision, projector, t5 = (modules[k].to(dtype) for k in ("vision", "projector", "t5"))
    pixels = torch.zeros(batch, 3, 336, 336, device="meta", dtype=dtype, requires_grad=True)
    d = t5.config.d_model

    def forward():
        features = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        tokens = projector(features)
        text = torch.zeros(batch, QUESTION_TOKENS, d, device="meta", dtype=dtype)
        embeds = torch.cat([tokens, text], dim=1)
        answer = torch.zeros(batch, 2, dtype=torch.long, device="meta")  # "Yes" </s>
        return t5(inputs_embeds=embeds, decoder_input_ids=answer).logits

    return saved_for_backward([vision, projector, t5], forward)


def estimate(sd_dtype, vqa_dtype, vqa_size: str, batch: int, allowance_gib: float, sd=None, vqa=None) -> dict:
    sd = sd or sd14_modules()
    vqa = vqa or clip_flant5_modules(vqa_size)
    sd_params, vqa_params = parameters(sd), parameters(vqa)
    weights = sum(sd_params.values()) * BYTES[sd_dtype] + sum(vqa_params.values()) * BYTES[vqa_dtype]
    vae_act = vae_decode_activations(sd["vae"], batch, sd_dtype)
    vqa_act = vqa_activations(vqa, batch, vqa_dtype)
    record = batch * 50 * 4 * 64 * 64 * BYTES[sd_dtype]  # the recorded guided predictions, 50 steps
    total = weights + vae_act + vqa_act + record + allowance_gib * GIB
    return {
        "sd_dtype": str(sd_dtype).removeprefix("torch."), "vqa": f"clip-flant5-{vqa_size}",
        "vqa_dtype": str(vqa_dtype).removeprefix("torch."), "batch": batch,
        "sd_parameters": sd_params, "vqa_parameters": vqa_params,
        "weights_gib": weights / GIB, "vae_decode_backward_gib": vae_act / GIB, "vqa_backward_gib": vqa_act / GIB,
        "record_gib": record / GIB, "allowance_gib": allowance_gib, "total_gib": total / GIB,
    }


def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, nargs="+", default=[1])
    parser.add_argument("--allowance_gib", type=float, default=1.5,
                        help="CUDA context, allocator slack, UNet transients (default: %(default)s)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sd = sd14_modules()
    vqa = {size: clip_flant5_modules(size) for size in ("xl", "xxl")}
    scenarios = [(torch.float32, "xl"), (torch.float16, "xl"), (torch.float32, "xxl"), (torch.float16, "xxl")]
    rows = [estimate(sd_dtype, torch.bfloat16, size, batch, args.allowance_gib, sd, vqa[size])
            for batch in args.batch_size for sd_dtype, size in scenarios]
    counts = {**{f"sd14 {k}": v for k, v in parameters(sd).items()},
              **{f"clip-flant5-{s} {k}": v for s in vqa for k, v in parameters(vqa[s]).items()}}
    print("| module | parameters |\n|---|---:|")
    for name, count in counts.items():
        print(f"| {name} | {count / 1e6:,.1f} M |")
    print("\n| SD1.4 dtype | verifier (bf16) | batch | weights GiB | VAE decode backward GiB | verifier backward GiB "
          "| allowance GiB | estimated peak GiB |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sd_dtype']} | {r['vqa']} | {r['batch']} | {r['weights_gib']:.1f} | "
              f"{r['vae_decode_backward_gib']:.1f} | {r['vqa_backward_gib']:.1f} | {r['allowance_gib']:.1f} | "
              f"{r['total_gib']:.1f} |")
    if args.json:
        write_json(args.json, {"parameters": counts, "estimates": rows, "estimate_not_measurement": True})
    return 0


if __name__ == "__main__":
    user_error_exit(main)
