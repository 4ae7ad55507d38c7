"""The VQGAN-LC tokenizer: autoencoder, configs and presets, model, checkpoints, losses."""
from .checkpoint import export_for_inference, load_reference_checkpoint
from .config import PRESETS, AutoencoderConfig, TokenizerConfig, get_preset
from .model import EncodeOutput, TokenizerOutput, VQModel

__all__ = ["AutoencoderConfig", "TokenizerConfig", "PRESETS", "get_preset", "VQModel", "EncodeOutput",
           "TokenizerOutput", "export_for_inference", "load_reference_checkpoint"]
