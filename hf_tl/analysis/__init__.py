"""Representation analysis: layer-by-layer CKA between two backbones, and the attention distance of ViT-likes.

`cka` holds the estimator, `layers` picks and hooks the layers (from `hf_tl.models.families.layout`),
`tokens` turns a layer's output into one feature row per image, `compare` runs two models over
the same images, `attention_distance` measures how far each head looks, `figures` draws both.
`hf-tl analyze` is the command line.
"""
