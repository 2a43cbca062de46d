"""Curvature of a model's loss, matrix-free: Hessian-vector products and what they give.

* :class:`HessianOperator`, :func:`hvp`: H v for the dataset's mean loss (three methods).
* :func:`lanczos`: extreme eigenvalues (and vectors), counted with multiplicity (block Lanczos).
* :func:`hutchinson_trace`: trace(H) with a standard error.
* :func:`spectral_density`: eigenvalue density by stochastic Lanczos quadrature.
* :func:`gradient_curvature`: g^T H g / g^T g.

The solvers accept a :class:`HessianOperator`, a dense symmetric matrix, or any object with
``dim`` and ``matvec`` on flat vectors.
"""

from synaprune.curvature.density import SpectralDensity, gaussian_density, spectral_density
from synaprune.curvature.gradient import GradientCurvature, gradient_curvature
from synaprune.curvature.hvp import HVP_METHODS, HessianOperator, hvp
from synaprune.curvature.lanczos import ConvergenceWarning, LanczosResult, lanczos
from synaprune.curvature.operator import LinearOperatorLike
from synaprune.curvature.trace import TraceEstimate, hutchinson_trace

__all__ = [
    "HVP_METHODS",
    "ConvergenceWarning",
    "GradientCurvature",
    "HessianOperator",
    "LanczosResult",
    "LinearOperatorLike",
    "SpectralDensity",
    "TraceEstimate",
    "gaussian_density",
    "gradient_curvature",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "spectral_density",
]
