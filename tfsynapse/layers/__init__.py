"""Synaptic layers (Lin et al., NeurIPS 2018) and model conversion to and from them."""

from tfsynapse.backends.tf_keras import register_custom_objects
from tfsynapse.layers import rule as _rule  # noqa: F401  (registers the graph rule)
from tfsynapse.layers.convert import SynapticReport, from_synaptic, to_synaptic
from tfsynapse.layers.proximal import ProximalL1, strength_sparsity, synaptic_strengths
from tfsynapse.layers.synaptic import SynapticConv2D


def custom_objects():
    """The layer classes needed to load models that contain them."""
    return {"SynapticConv2D": SynapticConv2D}


register_custom_objects(custom_objects())  # a plain load_model finds SynapticConv2D from now on

__all__ = ["ProximalL1", "SynapticConv2D", "SynapticReport", "custom_objects", "from_synaptic",
           "strength_sparsity", "synaptic_strengths", "to_synaptic"]
