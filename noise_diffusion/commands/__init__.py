"""The command lines: ``run.py`` / ``noise-diffusion-run`` and ``evaluate.py`` / ``noise-diffusion-evaluate``."""
