"""Shape search: pick how a weight is split into factors, not only the rank.

At a fixed parameter budget the error of a compressed layer depends as much on how its axes
are factored (TT / TR / HT modes, the pairing of out and in modes, the Kronecker factor
shapes, the semi-tensor factor t) as on its ranks. ``search(template, weight, axes, budget)``
enumerates the candidate shapes (``candidates``), bounds each one's error from singular values
of the weight's unfoldings before any decomposition (``spectra``), decomposes the few best for
real and returns a ``ShapeChoice``. ``adtn.encode(layer, template, budget=b)`` uses it by
default (``shape="auto"``) for the searchable formats (``searchable()``) when no ``modes=`` / ``factors=``
/ ``d=`` is given and the layer is initialised from its weight; ``shape="default"`` (or None)
keeps the fixed rule.

    choice = adtn.shapes.search("tt", linear.weight, {"out": 256, "in": 784}, budget=0.1)
    choice.options, choice.rank, choice.error, choice.summary()
"""

from .search import SEARCHABLE, ShapeChoice, search, searchable

__all__ = ["SEARCHABLE", "ShapeChoice", "search", "searchable"]
