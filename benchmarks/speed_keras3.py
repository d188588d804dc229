"""Speed on Keras 3: the speed section's protocol on ``keras.applications`` models.

The same models, ratios, criterion, export and interleaved LiteRT timing as ``speed``, built
with Keras 3 (``import keras``, TensorFlow backend) instead of tf_keras. tfmot cannot wrap
Keras 3 layers, so there is no ``prune_low_magnitude`` row.
"""

from benchmarks import speed

SECTION = "speed_keras3"


def run(ctx):
    return speed.run(ctx, backend="keras3", section=SECTION)


def markdown(result):
    return speed.markdown(result)
