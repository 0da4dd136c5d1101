"""adapt(): differentiable SGD on the fast parameters; step rules as transforms; backends func, higher, learn2learn."""

from metatuv.inner.backends import BACKENDS, VECTORIZE, TaskProblem, task_losses
from metatuv.inner.sgd import Params, StepRule, adapt, sgd_rule, sgd_step
from metatuv.inner.transforms import Transform, chain

__all__ = [
    "BACKENDS",
    "VECTORIZE",
    "Params",
    "StepRule",
    "TaskProblem",
    "Transform",
    "adapt",
    "chain",
    "sgd_rule",
    "sgd_step",
    "task_losses",
]
