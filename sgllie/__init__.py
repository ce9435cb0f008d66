"""sgllie: SGZ low-light image and video enhancement (Zheng & Gupta, WACV 2022) with fused ops."""
__version__ = "0.1.0"

from . import ops  # noqa: E402  registers the sgllie:: custom ops
from .model import EnhanceNet, load_model, save_checkpoint  # noqa: E402

__all__ = ["EnhanceNet", "load_model", "save_checkpoint", "ops", "__version__"]
