"""noise-diffusion: initial-noise optimisation for faithful text-to-image synthesis (Miao et al., CVPR 2025)."""

from . import quiet as _quiet  # noqa: F401 (first: its log filter must be in place before transformers is imported)
from .api import run
from .errors import UserError
from .generators import Generator, load_generator
from .methods import METHODS
from .optimize import RunResult, SearchConfig, optimize
from .verifiers import Verifier, load_verifier
from .specs import GeneratorSpec, VerifierSpec
from .update import alignments, batched_alignments, diffuse, gamma_from_score, select_noise

from . import toy  # noqa: E402,F401  isort: skip  (registers the toy world's model name and verifiers)

__version__ = "0.1.0"

__all__ = [
    "run", "optimize", "SearchConfig", "RunResult", "METHODS", "UserError", "GeneratorSpec", "VerifierSpec",
    "Generator", "load_generator", "Verifier", "load_verifier",
    "gamma_from_score", "select_noise", "diffuse", "alignments", "batched_alignments",
]
