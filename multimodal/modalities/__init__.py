"""Modalities: one package each (tokenizer, decoder, training objective), never importing a
sibling modality. See :class:`multimodal.modalities.base.Modality` for the contract."""
