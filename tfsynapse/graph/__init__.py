"""Channel dependency graph: which weights belong to one channel, and what it costs.

``dependency_groups(model)`` is the one source of truth for channel coupling: masking during
training, channel removal, MAC counting and sensitivity analysis all read its groups.
"""

from tfsynapse.graph import producer_rules, shape_rules  # noqa: F401 - register Keras layers
from tfsynapse.graph import application_rules  # noqa: F401 - registers ConvNeXt's layers
from tfsynapse.graph import attention_rules  # noqa: F401 - registers MultiHeadAttention
from tfsynapse.backends import unwrap
from tfsynapse.graph.builder import UnsupportedLayerError, dependency_groups
from tfsynapse.graph.groups import DependencyGraph, Group, Member, Slot
from tfsynapse.graph.channels import ChannelMap
from tfsynapse.graph.counting import (
    count_activations, count_macs, count_params, effective_shapes, kept_positions,
)
from tfsynapse.graph.producer_rules import Producer
from tfsynapse.graph.rules import (
    Elementwise,
    Freeze,
    PassThrough,
    Rule,
    register_rule,
    rule_for,
)
from tfsynapse.graph.trace import functional_model, keep_opaque
from tfsynapse.graph.walk import copy_model, flatten_calls, layer_from_config, replay

__all__ = [
    "ChannelMap", "DependencyGraph", "copy_model", "layer_from_config", "Elementwise", "Freeze", "Group", "Member", "PassThrough",
    "Producer", "Rule", "Slot", "UnsupportedLayerError", "count_activations", "count_macs",
    "count_params", "dependency_groups", "effective_shapes", "flatten_calls", "functional_model", "keep_opaque", "kept_positions", "register_rule",
    "replay", "rule_for", "unwrap",
]
