"""Errors that teach: every message says where (node, leg, bond, axis, layer), the rule, and what it got."""


class AdtnError(ValueError):
    """Base class of every adtn error: a ValueError whose message names place, rule and value."""


class GraphError(AdtnError):
    """A tensor-network graph that is malformed: unknown or duplicate names, bad bonds, bad axes."""


class FrozenGraphError(GraphError):
    """A frozen graph was asked to change."""


class ShapeError(AdtnError):
    """A tensor, input or factorization whose shape does not fit where it goes."""


class RankError(AdtnError):
    """A rank, budget or tolerance that does not fit."""


class TemplateError(AdtnError):
    """A template asked for by a name that is not registered, or given options it cannot build."""


class SchemaError(AdtnError):
    """Serialized data of an unknown or unsupported schema."""
