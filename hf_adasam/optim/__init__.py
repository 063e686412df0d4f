"""hf-adasam's optimizers; one module per method (see each module's docstring for the paper and math)."""

from ._compile import require_torch_floor

require_torch_floor()  # the first thing `import hf_adasam` runs: one line naming the floor on an older torch

from .adai import Adai  # noqa: E402
from .adasam import AdaSAM  # noqa: E402
from .adashift import AdaShift  # noqa: E402
from .cprop import CPropAdam, CPropSGD  # noqa: E402
from .generic_adam import GenericAdam  # noqa: E402
from .radam import RAdam  # noqa: E402
from .set_adam import SETAdam  # noqa: E402

__all__ = ["AdaSAM", "AdaShift", "Adai", "CPropAdam", "CPropSGD", "GenericAdam", "RAdam", "SETAdam"]
