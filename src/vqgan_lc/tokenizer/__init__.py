"""The VQGAN-LC tokenizer: autoencoder, configs and presets, model, checkpoints, losses."""
from .checkpoint import export_for_inference
from .config import PRESETS, AutoencoderConfig, TokenizerConfig, get_preset
from .model import EncodeOutput, TokenizerOutput, VQModel
from .reference import ReferenceCheckpoint, load_reference_checkpoint, read_reference_checkpoint

__all__ = ["AutoencoderConfig", "TokenizerConfig", "PRESETS", "get_preset", "VQModel", "EncodeOutput",
           "TokenizerOutput", "export_for_inference", "load_reference_checkpoint",
           "read_reference_checkpoint", "ReferenceCheckpoint"]
