"""CLIPScore: cosine similarity of CLIP image and text embeddings, mapped to [0, 1] as max(cos, 0) (or (1+cos)/2)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .base import Verifier, normalize, resize_center_crop
from .registry import register_verifier


class CLIPVerifier(Verifier):
    """A transformers ``CLIPModel`` as a differentiable verifier.

    The image path mirrors ``CLIPImageProcessor`` in torch (bicubic resize of the shortest side, centre crop,
    normalisation with the processor's mean/std) so that gradients reach the pixels.
    """

    def __init__(
        self, model, tokenizer, image_size: int, crop_size: int, mean, std, name: str = "clip", mapping: str = "clamp"
    ) -> None:
        super().__init__()
        if mapping not in ("clamp", "affine"):
            raise UserError(f"mapping must be 'clamp' (max(cos, 0)) or 'affine' ((1 + cos) / 2), got {mapping!r}")
        self.mapping = mapping
        self.model = model
        self.tokenizer = tokenizer
        self.image_size, self.crop_size = image_size, crop_size
        self.mean, self.std = list(mean), list(std)
        self.name = name
        self._text_cache: dict[str, Tensor] = {}
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32, mapping: str = "clamp"
    ) -> "CLIPVerifier":
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(name_or_path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        size = crop = model.config.vision_config.image_size
        mean, std = CLIP_MEAN, CLIP_STD
        # the processor's own settings when the folder has them (read as JSON: the processor class itself is not needed)
        processor = _processor_config(name_or_path)
        if processor:
            size = processor.get("size", {}).get("shortest_edge", size)
            crop = processor.get("crop_size", {}).get("height", crop)
            mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        return cls(model, tokenizer, size, crop, mean, std, name=str(name_or_path), mapping=mapping).to(device)

    def preprocess(self, images: Tensor) -> Tensor:
        images = resize_center_crop(images.float(), self.image_size, self.crop_size)
        return normalize(images, self.mean, self.std)

    def _text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing, padding=True, truncation=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                features = _as_tensor(self.model.get_text_features(**tokens)).float()
            for prompt, feature in zip(missing, features):
                self._text_cache[prompt] = torch.nn.functional.normalize(feature, dim=-1)
        return torch.stack([self._text_cache[p] for p in prompts])

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        pixels = self.preprocess(images.to(self.device)).to(self.model.dtype)
        image_features = _as_tensor(self.model.get_image_features(pixel_values=pixels)).float()
        image_features = torch.nn.functional.normalize(image_features, dim=-1)
        cosine = (image_features * self._text_embeddings(prompts)).sum(-1)
        return cosine.clamp_min(0.0) if self.mapping == "clamp" else (1.0 + cosine) / 2.0


def _processor_config(name_or_path: str) -> dict:
    import json
    import os

    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "preprocessor_config.json")
        if not os.path.isfile(path):
            return {}
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(name_or_path, "preprocessor_config.json")
        except Exception:  # noqa: BLE001 - optional file; fall back to CLIP's defaults
            return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _as_tensor(output) -> Tensor:
    # transformers 5 may return a model output with pooled features instead of a bare tensor
    if isinstance(output, Tensor):
        return output
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, attr, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected CLIP features output: {type(output).__name__}")


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


#: short name -> Hub id
CLIP_HUB_IDS = {
    "clip-vit-large-patch14": "openai/clip-vit-large-patch14",
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
}


@register_verifier(CLIP_HUB_IDS, model_types=("clip",))
def load_clip_verifier(name_or_path: str, device="cpu", dtype: torch.dtype = torch.float32, **options) -> CLIPVerifier:
    unknown = sorted(set(options) - {"mapping"})
    if unknown:
        raise UserError(f"CLIPScore takes no {', '.join(unknown)} (it compares the image with the prompt directly)")
    return CLIPVerifier.from_pretrained(name_or_path, device, dtype, **options)
