"""Where ``PrunedModel`` lived before the backend packages (tfsynapse 0.1.0 before issue #31).

tf_keras ``.keras`` files name their classes' module: a pruned model saved then names this
module, and Keras imports it to load the file. The class now lives in its backend
(``tfsynapse.backends.tf_keras.pruned_model``); this module keeps those files loading.
"""

from tfsynapse.backends.tf_keras.pruned_model import PrunedModel  # noqa: F401
