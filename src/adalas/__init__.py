"""adalas: dynamic depth for decoder-only language models."""
from .config import DepthConfig
from .model import AdalasForCausalLM

__version__ = "0.1.0"
__all__ = ["AdalasForCausalLM", "DepthConfig", "__version__"]
