"""Models: backbone resolution, the mean-pooled classifier, and the self-contained ensemble.

``inference`` is deliberately standalone (torch/transformers/numpy/pandas only): it is what the
MLflow pyfunc wraps and serves, so it must not import the agents or ``crowdforge.config``.
"""
