"""Training the toy worlds from scratch on a CPU (seeded). Nothing the package runs imports this package: the shipped
weights are loaded from ``noise_diffusion/toy/assets``, and these modules only make them.

- :mod:`.digits` trains ``toy-digits`` (``python -m noise_diffusion.toy.training.digits``);
- :mod:`.attn` trains ``toy-digits-attn`` (``python -m noise_diffusion.toy.training.attn``).
"""
