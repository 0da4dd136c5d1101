"""adapt(): differentiable SGD on the fast parameters; backends func (loop | vmap), higher, learn2learn."""

from metatuv.inner.backends import BACKENDS, VECTORIZE, TaskProblem, task_losses
from metatuv.inner.sgd import Params, StepRule, adapt, sgd_rule, sgd_step

__all__ = [
    "BACKENDS",
    "VECTORIZE",
    "Params",
    "StepRule",
    "TaskProblem",
    "adapt",
    "sgd_rule",
    "sgd_step",
    "task_losses",
]
