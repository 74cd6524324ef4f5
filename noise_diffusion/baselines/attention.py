"""The attention store that both attention baselines (InitNO, Attend-and-Excite) read, and its map preprocessing.

While a store is attached (:func:`attach_store`), every attention layer of the UNet computes its attention
probabilities explicitly (``softmax(QKᵀ·scale)`` per head, as both original pipelines do) and, when the store is
``recording``, keeps the probabilities of the layers whose query grid has ``resolution × resolution`` cells: the
cross-attention maps ``[heads, HW, tokens]`` and the self-attention maps ``[heads, HW, HW]``. The aggregate of a kind is
the mean over every kept layer and head, reshaped to ``[r, r, tokens]`` (cross) or ``[r, r, r·r]`` (self); each row of
it is a probability distribution, so it sums to one over its last axis. The layers are summed in the originals' order
(up blocks, down blocks, mid block, each in call order), so that the mean is theirs to the last bit.

The maps are then prepared as the originals do (:func:`text_softmax`, :func:`smooth`): drop the first (start) and the last token of the
padded sequence, multiply by 100, softmax over the remaining tokens, take each subject token's map and smooth it with a
3×3 Gaussian (σ = 0.5; the originals' kernel is exp(-((x-μ)/(2σ))²), normalised) after reflect padding.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("cross", "self")
#: where a layer sits in the UNet, in the order the originals sum the layers in
PLACES = ("up", "down", "mid")
#: the originals' resolution for SD at 512x512 (64x64 latents): a quarter of the latent side
DEFAULT_RESOLUTION = 16


def place_in_unet(processor_name: str) -> str:
    """``"up"``, ``"down"`` or ``"mid"`` from an attention processor's name (``up_blocks.0.attentions...``)."""
    for place, prefix in (("up", "up_blocks"), ("down", "down_blocks"), ("mid", "mid_block")):
        if processor_name.startswith(prefix):
            return place
    raise ValueError(f"attention layer {processor_name!r} is in none of the UNet's up, down and mid blocks")


class AttentionStore:
    """Attention probabilities of the last recorded UNet forward at one resolution."""

    def __init__(self, resolution: int, kinds: Sequence[str] = KINDS) -> None:
        self.resolution = int(resolution)
        self.kinds = tuple(kinds)
        self.recording = False
        self.clear()

    def clear(self) -> None:
        #: per kind, the kept maps in call order, and where each layer sits (:data:`PLACES`)
        self.maps: dict[str, list[Tensor]] = {kind: [] for kind in KINDS}
        self.places: dict[str, list[str]] = {kind: [] for kind in KINDS}

    def add(self, probabilities: Tensor, is_cross: bool, place: str = "down") -> None:
        kind = "cross" if is_cross else "self"
        if self.recording and kind in self.kinds and probabilities.shape[1] == self.resolution ** 2:
            self.maps[kind].append(probabilities)
            self.places[kind].append(place)

    def aggregate(self, kind: str) -> Tensor:
        """Mean over layers and heads: ``[r, r, tokens]`` for ``cross``, ``[r, r, r*r]`` for ``self``."""
        kept = self.maps[kind]
        if not kept:
            raise RuntimeError(f"no {kind}-attention maps at {self.resolution}x{self.resolution} were recorded")
        r = self.resolution
        ordered = [m for place in PLACES for m, where in zip(kept, self.places[kind]) if where == place]
        stacked = torch.cat([m.reshape(-1, r, r, m.shape[-1]) for m in ordered], dim=0)
        return stacked.sum(0) / stacked.shape[0]


class StoreAttnProcessor:
    """Attention with explicit probabilities (the computation of the original pipelines), reported to a store."""

    def __init__(self, store: AttentionStore, place: str) -> None:
        self.store, self.place = store, place

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        batch, length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        # the originals' order of operations (projections first), so that the backward pass sums in their order too
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        self.store.add(probabilities, is_cross, self.place)
        out = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def attach_store(unet, store: AttentionStore) -> Iterator[AttentionStore]:
    """Route every attention layer of ``unet`` through ``store`` for the duration; the processors are restored after."""
    original = unet.attn_processors
    unet.set_attn_processor({name: StoreAttnProcessor(store, place_in_unet(name)) for name in original})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


@contextmanager
def recording(store: AttentionStore) -> Iterator[AttentionStore]:
    """Keep the maps of the forwards made inside the block (and only those)."""
    store.clear()
    store.recording = True
    try:
        yield store
    finally:
        store.recording = False


def attention_resolutions(unet, latent_size: int) -> list[int]:
    """Side lengths of the query grids at which ``unet`` has cross-attention, for square latents of ``latent_size``."""
    config = unet.config
    levels = len(config.block_out_channels)
    sizes = set()
    for i, kind in enumerate(config.down_block_types):
        if "CrossAttn" in kind:
            sizes.add(latent_size // 2 ** i)
    for i, kind in enumerate(config.up_block_types):
        if "CrossAttn" in kind:
            sizes.add(latent_size // 2 ** (levels - 1 - i))
    if config.mid_block_type and "CrossAttn" in config.mid_block_type:
        sizes.add(latent_size // 2 ** (levels - 1))
    return sorted(sizes)


def default_resolution(unet, latent_size: int) -> int:
    """A quarter of the latent side (16 for SD1.x/2.x at 512x512, the originals' setting) when the UNet has
    cross-attention there; otherwise the finest cross-attention level not above 16 (e.g. 8 for the toy world's 8x8
    latents, whose attention levels are 8 and 4)."""
    sizes = attention_resolutions(unet, latent_size)
    if not sizes:
        raise ValueError("the UNet has no cross-attention layers")
    quarter = latent_size // 4
    if quarter in sizes:
        return quarter
    small = [s for s in sizes if s <= DEFAULT_RESOLUTION]
    return max(small) if small else min(sizes)


# ------------------------------------------------------------------------------------------------ preprocessing

def gaussian_kernel(size: int = 3, sigma: float = 0.5) -> Tensor:
    """The originals' smoothing kernel: the product over both axes of exp(-((x-μ)/(2σ))²), normalised to sum 1."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    one_d = torch.exp(-((coords / (2 * sigma)) ** 2)) / (sigma * math.sqrt(2 * math.pi))
    kernel = one_d[:, None] * one_d[None, :]
    return kernel / kernel.sum()


def smooth(attention_map: Tensor, size: int = 3, sigma: float = 0.5) -> Tensor:
    """Gaussian smoothing of one ``[H, W]`` map after reflect padding (same size out)."""
    kernel = gaussian_kernel(size, sigma).to(attention_map.device, attention_map.dtype)[None, None]
    pad = size // 2
    padded = F.pad(attention_map[None, None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel)[0, 0]


def text_softmax(cross_maps: Tensor) -> Tensor:
    """``[r, r, tokens]`` -> ``[r, r, tokens-2]``: drop the first and last token, softmax of 100x over the rest."""
    return torch.softmax(cross_maps[:, :, 1:-1] * 100, dim=-1)
