"""The train step's static settings, defined and checked once (no JAX: --help reads them).

trainer/step.py compiles its steps from a StepOptions; trainer/args.py's
TrainingArguments extends it, so each field here is also a flag of train.py.
"""

import dataclasses

from pipeline.config import check_positive, setting
from pipeline.errors import InputError


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The step's static settings (changing one recompiles)."""

    gradient_accumulation_steps: int = setting(
        1, "Micro-batches per optimizer step, summed exactly as one big batch.")
    label_smoothing: float = setting(0.0, "Label smoothing of the loss.")
    full_mlm_head: bool = setting(
        False, "Compute the MLM head at every position and take the loss from 'labels' "
               "(slower; by default only masked positions are computed).")
    skip_nonfinite_updates: bool = setting(
        False, "Skip (and count) updates whose loss or gradients are not finite.")

    def __post_init__(self):
        check_positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_args(cls, args):
        """The step's options out of settings that include them (TrainingArguments)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
