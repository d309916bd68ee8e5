"""The quantization flow: pt2e-pipeline's built-in stages, conditions and quantizers.

Everything here reaches the engine through the ``pt2e_pipeline`` entry-point
group (``builtin = plugins.builtin``), the same path a third-party plugin takes.
"""
