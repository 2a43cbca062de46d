"""Problems known for bad local minima, each with its known global loss.

A :class:`Problem` gives a deterministic float64 model per seed, its training data (or an
exact loss), the known global loss and a success tolerance, with the loss available both for
an ordinary training loop and as a pure function of stacked parameters for ``torch.func``.

Registered problems (see :func:`get_problem` for options): ``xor``, ``teacher-student``,
``spirals``, ``gaussians``, ``autoencoder``, ``digits``.

Example:
    >>> from synaprune.problems import get_problem, list_problems
    >>> list_problems()
    ['autoencoder', 'digits', 'gaussians', 'spirals', 'teacher-student', 'xor']
    >>> problem = get_problem("teacher-student:k=8")
    >>> model = problem.build_model(seed=0)
    >>> loss = problem.loss(model)  # exact population loss, a scalar tensor
    >>> problem.solved(loss.item())
    False
"""

from ._base import Problem
from ._digits import pca_reconstruction_mse
from ._registry import get_problem, list_problems
from ._teacher_student import relu_kernel

__all__ = ["Problem", "get_problem", "list_problems", "pca_reconstruction_mse", "relu_kernel"]
