"""DynaMer (ICLR 2025 submission, "Stand on two shoulders"): dynamically merging tokens of a general and a
medical ViT with a gated mixture-of-experts adapter after every layer and a layer-wise skipping router.

``config`` (its options), ``layer`` (the paper's equations, readable), ``experts`` (the shared experts), ``fast``
(the layer production runs: the same function computed faster), ``model`` (the model, registered as ``dynamer``).
"""
from medvtab.methods.dynamer import model  # noqa: F401  (importing it registers the method)
