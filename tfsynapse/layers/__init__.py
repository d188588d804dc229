"""Synaptic layers (Lin et al., NeurIPS 2018) and model conversion to and from them."""

from tfsynapse.layers import rule as _rule  # noqa: F401  (registers the graph rule)
from tfsynapse.layers.convert import SynapticReport, from_synaptic, to_synaptic
from tfsynapse.layers.proximal import ProximalL1, strength_sparsity, synaptic_strengths
from tfsynapse.layers.synaptic import SynapticConv2D


__all__ = ["ProximalL1", "SynapticConv2D", "SynapticReport", "from_synaptic",
           "strength_sparsity", "synaptic_strengths", "to_synaptic"]
