"""Every private Transformers name hf-adasam touches, in this one module.

Everything else in the integration uses public extension points (a ``TrainingArguments`` subclass,
``Trainer.get_optimizer_cls_and_kwargs`` / ``create_optimizer`` / ``create_scheduler`` / ``train`` /
``training_step`` / ``log`` / ``create_model_card``, ``TrainerCallback``). What is left here is what
``--optim adasam`` needs in an *unmodified* script or a plain ``transformers.Trainer`` (the optimizer table, the
enum, the default callbacks where the guard against a SAM optimizer without SAM sits), and the one private
``Trainer`` method SAM's second pass overrides (:class:`PassTwoInputs`), each use with the versions it was
checked on. When one has moved, :func:`require` raises at once, naming it and the
way around it: nothing falls back silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHECKED", "PassTwoInputs", "add_enum_member", "default_callbacks", "optimizer_handlers", "require"]

# the Transformers versions each private use below was read on and tested with (CI: floor and newest)
CHECKED = "5.6.0 and 5.25.0"


def require(module: Any, name: str, why: str, instead: str) -> Any:
    """``module.name``, or a ``RuntimeError`` that says what moved, why it is needed and what works instead."""
    if not hasattr(module, name):
        import transformers

        raise RuntimeError(
            f"hf-adasam needs {module.__name__}.{name} ({why}; checked on transformers {CHECKED}), which transformers "
            f"{transformers.__version__} does not have. {instead}"
        )
    return getattr(module, name)


_ENUM_INTERNALS = ("_value2member_map_", "_member_map_", "_member_names_")


def add_enum_member(enum_cls: Any, name: str, value: str) -> None:
    """Add ``value`` to ``OptimizerNames`` (an ``ExplicitEnum``), pickling as the plain string.

    Why: ``TrainingArguments.__post_init__`` runs ``OptimizerNames(self.optim)``, so a name outside the
    enum is refused before any public hook runs. Uses the ``enum`` module's member tables
    (``_value2member_map_``, ``_member_map_``, ``_member_names_``). Checked: transformers :data:`CHECKED`,
    Python 3.10-3.12.
    """
    for attr in _ENUM_INTERNALS:
        if not hasattr(enum_cls, attr):
            raise RuntimeError(f"hf-adasam adds its names to {enum_cls.__qualname__} through enum's {attr}, which this "
                               f"Python does not have (checked: 3.10-3.12, transformers {CHECKED})")
    if value in enum_cls._value2member_map_:
        return
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    # pickles as the plain string, so a training_args.bin loads where hf-adasam is not installed
    member.__reduce_ex__ = lambda *_: (str, (value,))
    member._sort_order_ = len(enum_cls._member_names_)
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)


def optimizer_handlers() -> dict[str, Any]:
    """``transformers.trainer_optimizer._OPTIMIZER_HANDLERS``: the table plain ``Trainer`` builds optimizers from.

    Why: a plain ``transformers.Trainer`` (not ``SAMTrainer``, which overrides the public
    ``get_optimizer_cls_and_kwargs``) looks ``optim`` up in this dict. Exists from transformers 5.2; checked
    on :data:`CHECKED`.
    """
    from transformers import trainer_optimizer

    return require(trainer_optimizer, "_OPTIMIZER_HANDLERS", "plain transformers.Trainer looks optim names up in it",
                   "Use hf_adasam.SAMTrainer (or `python -m hf_adasam script.py`), which needs only public methods.")


def default_callbacks() -> list[Any]:
    """``transformers.trainer.DEFAULT_CALLBACKS``: the callbacks every ``Trainer`` (TRL's too) is built with.

    Why: a plain ``Trainer`` given an hf-adasam optimizer that needs SAM (by name, or as an instance through
    ``optimizers=``) must be refused when it is built, and no public hook runs inside an unmodified
    ``Trainer.__init__``; ``Trainer.__init__`` reads this list at call time, and ``on_init_end`` receives the
    optimizer. Checked on :data:`CHECKED`.
    """
    from transformers import trainer

    callbacks = require(trainer, "DEFAULT_CALLBACKS", "every Trainer's default callbacks, where hf-adasam's guard "
                        "against a SAM optimizer stepped without SAM sits",
                        "Use hf_adasam.SAMTrainer / SAMTrainerMixin, which need no guard.")
    if not isinstance(callbacks, list):
        raise RuntimeError(f"hf-adasam expected transformers.trainer.DEFAULT_CALLBACKS to be a list (checked on "
                           f"transformers {CHECKED}); it is a {type(callbacks).__name__}")
    return callbacks


class PassTwoInputs:
    """SAM's second pass gets exactly the batch the first pass trained on: ``Trainer._prepare_inputs`` is run once.

    Why: ``Trainer.training_step`` turns the dataloader's batch into the model's inputs with ``_prepare_inputs``,
    which trainers override to do real work: TRL's ``GRPOTrainer`` generates completions there (sampling, and
    counting ``self._step``), so running it again for pass 2 would train pass 2 on other completions, generated by
    the perturbed model. This override keeps pass 1's prepared inputs (a shallow copy: ``compute_loss`` may pop
    keys) and hands them to pass 2. ``Trainer._prepare_inputs`` exists and ``training_step`` calls it on
    :data:`CHECKED`; TRL 1.16's ``GRPOTrainer`` overrides it. If pass 1 never calls it (it moved), the mixin warns
    once and pass 2 prepares its own inputs.
    """

    _sam_capture: dict[str, Any] | None = None  # set for pass 1: receives the prepared inputs
    _sam_replay: dict[str, Any] | None = None  # set for pass 2: holds them

    def _prepare_inputs(self, inputs: Any) -> Any:
        replay = self._sam_replay
        if replay is not None and "inputs" in replay:
            prepared = replay["inputs"]
            return dict(prepared) if isinstance(prepared, dict) else prepared
        prepared = super()._prepare_inputs(inputs)  # type: ignore[misc]
        if self._sam_capture is not None:  # the outermost call returns last, so its result stays
            self._sam_capture["inputs"] = dict(prepared) if isinstance(prepared, dict) else prepared
        return prepared

    @staticmethod
    def check_captured(prepared: dict[str, Any]) -> None:
        """Before pass 2: warn once if pass 1 never went through ``_prepare_inputs`` (it moved, or a trainer's
        ``training_step`` bypasses it), so pass 2 prepares its own inputs."""
        if "inputs" not in prepared and not _WARNED:
            _WARNED.append(True)
            from .._logging import logger

            logger.warning("hf-adasam: pass 1 never called Trainer._prepare_inputs (checked on transformers %s), so "
                           "SAM's second pass prepares its own inputs: a trainer that generates there (GRPO) would "
                           "train pass 2 on new samples", CHECKED)


_WARNED: list[bool] = []


def check_pass_two_inputs() -> None:
    """Fail at import if ``Trainer._prepare_inputs``, which :class:`PassTwoInputs` overrides, is gone."""
    from transformers import Trainer

    require(Trainer, "_prepare_inputs", "SAM's second pass reuses the first pass's prepared inputs",
            "Pin transformers to a checked version.")
