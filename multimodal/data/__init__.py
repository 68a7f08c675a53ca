"""Dataset readers that are not specific to one modality's decoder."""

from multimodal.errors import DataError


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is ``"train"`` or ``"val"``."""
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
