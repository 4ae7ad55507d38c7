"""Classification on token maps: how much of an image's class its tokens keep (the paper's
ViT-on-tokens result), for any tokenizer of this package."""
from .model import CLASSIFIER_PRESETS, EMBEDDINGS, TokenClassifier, TokenClassifierConfig, classifier_preset
from .training import (
    ClassifierTask,
    ClassifierTrainConfig,
    classifier_config,
    classify,
    evaluate_classifier,
    tokenizer_codes,
    train_classifier,
)

__all__ = ["CLASSIFIER_PRESETS", "EMBEDDINGS", "TokenClassifier", "TokenClassifierConfig", "classifier_preset",
           "ClassifierTask", "ClassifierTrainConfig", "classifier_config", "classify", "evaluate_classifier",
           "tokenizer_codes", "train_classifier"]
