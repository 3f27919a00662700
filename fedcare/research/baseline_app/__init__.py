"""A minimal Flower app in the style of ``flwr new``'s TensorFlow template, for timing.

It is the yardstick of ``fedcare perf``: the same data (fedcare's loader and site-local
preprocessing), the same Dense model and the same DP-SGD settings, written the way
Flower's template writes an app: each call builds and compiles the Keras model and
loads its partition, trains with ``model.fit`` (DP through tensorflow-privacy's
``DPKerasSGDOptimizer``), and the server runs Flower's ``FedAvg`` as it comes. It is not
part of fedcare's product and carries no privacy accounting.
"""
