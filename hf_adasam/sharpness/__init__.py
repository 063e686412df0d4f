"""The sharpness-aware machinery, independent of Transformers (docs/sam.md).

- :mod:`.config`: :class:`SAMConfig`, every knob's default, check and help text;
- :mod:`.perturbation`: w ← w + e (SAM, ASAM) and the bit-exact restore;
- :mod:`.policies`: :class:`Policy`, when a micro-batch pays the second pass (always, AE-SAM, LookSAM,
  AE-LookSAM);
- :mod:`.step`: the two-pass micro-step :class:`SAMStep` that composes them;
- :mod:`.sam`: :class:`SAM`, that step as a ``torch.optim.Optimizer`` wrapper for plain loops.

``hf_adasam.transformers_integration`` runs the same :class:`SAMStep` inside ``Trainer``.
"""

from .config import DEFAULT_RHO, POLICIES, SAMConfig
from .perturbation import Perturbation
from .policies import AESAM, Always, EveryK, LookSAM, Policy, make_policy
from .sam import SAM
from .step import SAMStep

__all__ = ["AESAM", "DEFAULT_RHO", "POLICIES", "SAM", "Always", "EveryK", "LookSAM", "Perturbation", "Policy",
           "SAMConfig", "SAMStep", "make_policy"]
