"""Why JiT works: the information content of a sample and the input-space curvature around it."""

from jit_jax.analysis.curvature import (
    HutchinsonEstimate,
    curvature_stats,
    gradient_norm,
    hessian,
    hessian_frobenius,
    hutchinson_frobenius_sq,
    hvp,
    input_gradient,
    kappa,
    scalar_fn,
    top_eigenvalue,
)
from jit_jax.analysis.information import (
    AlphaResult,
    alpha,
    choose_radius,
    information_label,
    is_low_information,
    kth_neighbour_distance,
)

__all__ = [
    "AlphaResult",
    "HutchinsonEstimate",
    "alpha",
    "choose_radius",
    "curvature_stats",
    "gradient_norm",
    "hessian",
    "hessian_frobenius",
    "hutchinson_frobenius_sq",
    "hvp",
    "information_label",
    "input_gradient",
    "is_low_information",
    "kappa",
    "kth_neighbour_distance",
    "scalar_fn",
    "top_eigenvalue",
]
