"""One :class:`~multimodal.plugins.ModalitySpec` per built-in modality: what each brings (its
objective, tokenizer, decoder, pipeline, file writer and reader, an example input and a tiny
config), registered in the ``specs`` registry as a plugin's spec would be.

Specs sit above modalities, pipelines and :mod:`multimodal.testing` (whose tiny configs they
name), so none of those needs to import them.
"""
