"""noise-diffusion: initial-noise optimisation for faithful text-to-image synthesis (Miao et al., CVPR 2025)."""

from .commands.startup import interruptible_start

with interruptible_start():  # an installed command's start-up: Ctrl-C is one line, exit 130
    from . import quiet as _quiet  # noqa: F401 (first: its log filter must be in place before transformers is imported)
    from .api import run
    from .errors import UserError
    from .generators import Generator, load_generator
    from .methods import METHODS
    from .optimize import SearchConfig, optimize
    from .records import RunRecord
    from .verifiers import Verifier, load_verifier
    from .specs import GeneratorSpec, VerifierSpec
    from .update import alignments, batched_alignments, diffuse, gamma_from_score, select_noise

    from . import toy  # noqa: F401  isort: skip  (registers the toy world's model name and verifiers)

__version__ = "0.1.0"

__all__ = [
    "run", "optimize", "SearchConfig", "RunRecord", "METHODS", "UserError", "GeneratorSpec", "VerifierSpec",
    "Generator", "load_generator", "Verifier", "load_verifier",
    "gamma_from_score", "select_noise", "diffuse", "alignments", "batched_alignments",
]
