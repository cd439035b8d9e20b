"""The model floor: the one PVT class, its typed config, the variants as data, the registry, the
backbone as ``features_only`` and the attention maps of any PVT.

``config`` (:class:`PVTConfig`), ``model`` (:class:`PyramidVisionTransformer`), ``variants`` (the eleven
published variants and MiT-B0..B5), ``registry`` (``create_model``, ``list_models``), ``features``
(:class:`PVTFeatures`), ``attention`` (``attention_maps``). The package's faces are ``pvt`` itself and these
modules; this file imports nothing so that ``import pvt.models.config`` stays light.
"""
