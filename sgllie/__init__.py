"""sgllie: SGZ low-light image and video enhancement (Zheng & Gupta, WACV 2022) with fused ops."""
__version__ = "0.1.0"

import os as _os

# Installed, setup.py places the top-level kernels/ at sgllie/kernels. Run from a source checkout,
# let "import sgllie.kernels" find kernels/ where it is.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)

from . import ops  # noqa: E402  registers the sgllie:: custom ops
from .model import EnhanceNet, load_model, save_checkpoint  # noqa: E402

__all__ = ["EnhanceNet", "load_model", "save_checkpoint", "ops", "__version__"]
