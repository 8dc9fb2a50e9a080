"""Pure plotting functions: tensors and arrays in, ``matplotlib`` / ``plotly`` figures out.

Nothing here changes a model; widgets elsewhere only call these functions again with new values.
"""
from segviz.viz.data import plot_shapes  # noqa: F401
