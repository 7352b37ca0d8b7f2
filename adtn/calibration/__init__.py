"""Data-aware compression: minimise a layer's output error on calibration inputs.

With ``Sigma = E[x x^T]`` of a layer's inputs and ``L`` its Cholesky factor, every
initialiser minimises ``||(W - W_hat) L||_F`` (= the output error on those inputs) instead
of the weight error: ``covariance`` collects ``Sigma`` (``covariance.py``), ``whitening``
factors it (damped Cholesky, Kronecker factors per input mode), ``init`` whitens, decomposes,
un-whitens and refines any template's network, and ``allocation`` shares a model's budget by
each layer's whitened spectrum.

    cov = adtn.calibration.covariance(layer, x)
    tn = adtn.encode(layer, "tt", budget=0.2, calibration=x)        # or calibration=cov
    model, report = adtn.compress(model, "hybrid", budget=0.2, calibration=loader, sequential=True)
"""

from .covariance import DAMPING, Accumulator, Covariance, covariance, geometry_of
from .whitening import cholesky_factor, inverse_factor, kron_error, kron_factors

__all__ = ["DAMPING", "Accumulator", "Covariance", "cholesky_factor", "covariance", "geometry_of",
           "inverse_factor", "kron_error", "kron_factors"]
