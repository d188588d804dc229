"""The Keras implementations tfsynapse binds to: the public seam every other package uses.

``tfsynapse.backends.tf_keras`` is the one module that imports tf_keras (Keras 2) and tfmot;
``tfsynapse``'s packages, ``tflite_export``, the examples, benchmarks and tests import
``keras``, ``tf`` and the tfmot pieces from it. A Keras 3 backend is added beside it.
"""
