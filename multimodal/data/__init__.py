"""Dataset readers that are not specific to one modality's decoder."""
