"""hf-adasam's optimizers; one module per method (see each module's docstring for the paper and math)."""

from .adai import Adai
from .adasam import AdaSAM
from .adashift import AdaShift
from .cprop import CPropAdam, CPropSGD
from .generic_adam import GenericAdam
from .radam import RAdam
from .set_adam import SETAdam

__all__ = ["AdaSAM", "AdaShift", "Adai", "CPropAdam", "CPropSGD", "GenericAdam", "RAdam", "SETAdam"]
