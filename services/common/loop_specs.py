"""What the loop models are made of and what they are called: shared by the exporter (which builds
them, :mod:`couturier.export.loop_models`), the latent service (which calls them) and the test fakes.

A loop model runs K Adam steps of one latent optimiser in one call: an ONNX ``Loop`` around the
gradient model of the same objective. Its signature is derived from the gradient model's by the
rules of :class:`LoopSpec` (see :mod:`couturier.export.loop_models` for the whole contract).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from couturier.services.common.models import INV_GRAD, INV_LOOP, PREF_GRAD, PREF_LOOP, SHIFT_GRAD, SHIFT_LOOP

__all__ = ["ADAM_BETA1", "ADAM_BETA2", "ADAM_EPS", "LOOP_SPECS", "ROW_INPUT_TYPES", "LoopSpec"]

#: Adam's constants, baked into every loop model (the defaults of ``optimize.Adam``).
ADAM_BETA1: Final = 0.9
ADAM_BETA2: Final = 0.999
ADAM_EPS: Final = 1e-8
#: Element types (numpy names) of the loop models' per-row ``(B,1)`` inputs: Adam steps already taken,
#: steps to take, whether to evaluate the start point first, Adam's rate, the shifts' L2 radius.
ROW_INPUT_TYPES: Final = {
    "step": "int64",
    "steps": "int64",
    "evaluate_first": "bool",
    "learning_rate": "float64",
    "radius": "float64",
}


@dataclass(frozen=True)
class LoopSpec:
    """How a loop model is built from its gradient model, and the names of its inputs and outputs.

    ``variable``: the gradient model's input that is optimised; ``gradient``: its output d value /
    d variable; ``parameter``: the loop model's name of the optimised state; ``constraint``:
    ``"tanh"`` (``variable = tanh(parameter)``) or ``"ball"`` (``parameter`` is the shift itself,
    projected onto the box around the gradient model's input ``base`` and an L2 ball after each
    step); ``best``: outputs copied at the best point evaluated (empty: no best tracking);
    ``history``: outputs returned at every step (``<name>_history``, steps on axis 1).
    """

    gradient_model: str
    variable: str
    gradient: str
    parameter: str
    constraint: Literal["tanh", "ball"]
    base: str = ""
    best: tuple[str, ...] = ()
    history: tuple[str, ...] = ("value",)

    # -- names of the loop model's inputs and outputs

    @property
    def state_inputs(self) -> tuple[str, str, str, str]:
        """(parameter float64, Adam's m float64, v float64, gradient at the start point float32)."""
        return (self.parameter, "m", "v", self.gradient)

    @property
    def state_outputs(self) -> tuple[str, str, str, str]:
        """The state after the call, in the order of :attr:`state_inputs`."""
        return tuple(f"next_{name}" for name in self.state_inputs)  # type: ignore[return-value]

    @property
    def row_inputs(self) -> tuple[str, ...]:
        """Per-row scalars ``(B,1)`` (element types in :data:`ROW_INPUT_TYPES`)."""
        return ("step", "steps", "evaluate_first", "learning_rate") + (("radius",) if self.constraint == "ball" else ())

    def history_output(self, name: str) -> str:
        return f"{name}_history"

    @property
    def best_outputs(self) -> tuple[str, ...]:
        """``best_value``, ``best_step``, ``best_<variable>``, ``best_<name>`` for each of :attr:`best`
        (empty without best tracking)."""
        if not self.best:
            return ()
        return ("best_value", "best_step", f"best_{self.variable}", *(f"best_{name}" for name in self.best))


#: Every loop model and how it is built.
LOOP_SPECS: Final[dict[str, LoopSpec]] = {
    INV_LOOP: LoopSpec(INV_GRAD, "z", "grad_z", "w", "tanh", best=("image",)),
    PREF_LOOP: LoopSpec(PREF_GRAD, "z", "grad_z", "w", "tanh", history=("value", "phi")),
    SHIFT_LOOP: LoopSpec(SHIFT_GRAD, "shifts", "grad_shifts", "shifts", "ball", base="base_z"),
}
