"""Whole-model compression: ``compress`` walks a model and encodes every layer a policy selects.

    model, report = adtn.compress(model, policy="hybrid", budget=0.1, calibration=batch)
    print(report)
    adtn.finetune(model, train_loader, val_loader, epochs=3, teacher=original)

Policies (per ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layer not skipped):

- a template name: that template everywhere;
- ``"hybrid"``: HT for linear layers, TT for conv layers (Wu et al. 2020, arXiv 2006.15938);
- ``"mixed"``: Tucker-2 or CP at the same budget, whichever gives the lower output error on
  the calibration batch (the lower weight error without one; MTD, Liang and Lee, IPDPSW 2021);
- ``"auto"``: every template that fits the layer (``candidates=``; default all registered but
  ``adtn`` and ``semi_*``, and always ``cp``, which on a weight matrix is exactly the truncated
  SVD), each at the layer's share of the budget; the lowest error is kept;
- a dict from layer name (or glob pattern; first match wins) to a template name, one of the
  policy names above, an options dict ``{"template": ..., **options}`` (``"template"`` may be
  a list of candidates), or None (left dense); layers that match no key stay dense;
- a callable ``f(name)`` or ``f(name, module)`` returning any such value.

Budget allocation: ``budget`` is the parameter fraction of the compressed layers' weights
(biases stay dense; layers whose options give a size count with what they take). Each layer
gets the same fraction of its own weight (a layer whose smallest size is above that share
takes its smallest size, and the others share what is left); each layer takes the largest
size (uniform rank, or depth) within its share, then the layers furthest below their share
grow one size step at a time while the total stays within budget (one last step may overshoot
by up to 10%; no layer grows past ``1 - min_gain`` of its weight). A layer whose network still
saves less than ``min_gain`` (10%) of its weight stays dense, listed in ``report.skipped``,
and the others share the budget again. ``mixed`` / ``auto`` compare their candidates at the share, then once more at
the parameters the allocation gave the layer. The achieved total is within 10% of ``budget``
times the dense parameters: a ``RankError`` names the layers that cannot get that small, and a
warning says when the sizes' steps are too coarse to land within 10%. That is
``allocation="uniform"``, the default. With calibration, ``allocation="global"`` starts every
layer at its smallest size and the greedy knapsack of ``adtn.calibration.allocation`` grows,
one size step at a time, the layer whose whitened spectrum says its output error falls most
per added parameter, while the total stays within the budget (one last step may pass it by
up to 10% when that lands closer); the report's footer lists each layer's share. It is not
the default: the whitened SVD spectrum is a proxy for the other formats, and on the trained
LeNet-5 / CNN of ``benchmarks/calibration.py`` it helped some policies and hurt others.

Calibration (``adtn.calibration``): one pass of the data through the model collects each
layer's input covariance with forward hooks; every layer's initialiser then minimises its
output error on the data, and ``sequential=True`` collects each layer's covariance again on
the model whose earlier layers are already compressed.

The package splits by idea: ``policy`` (which layers, which formats), ``sizes`` (a layer's job
and ladder of sizes), ``choice`` (build, errors, the choice among formats), ``allocate`` (the
budget's shares) and ``run`` (``compress`` itself).
"""

from .policy import POLICIES, default_candidates
from .run import compress

__all__ = ["POLICIES", "compress", "default_candidates"]
