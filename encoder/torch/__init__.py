"""Torch data-free encoders: the CPU encoders' exact arithmetic on any torch device (``--device cuda``)."""
