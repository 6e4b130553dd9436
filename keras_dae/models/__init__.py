"""The Diverse Audio Embeddings model: featurizer, backbone of stream towers, classifier."""

from keras_dae.models.backbone import DiverseBackbone
from keras_dae.models.classifier import DiverseClassifier, build_diverse_classifier
from keras_dae.models.contrastive import DiverseContrastive, EmbeddingSpread, PairSimilarity
from keras_dae.models.derived import copy_variables, derived_model
from keras_dae.models.featurizer import STREAMS, DiverseFeaturizer, default_stream_frontends
from keras_dae.models.position_embedding import PositionEmbedding
from keras_dae.models.stream_tower import StreamTower
from keras_dae.models.transformer_encoder import TransformerEncoder

__all__ = [
    "STREAMS",
    "DiverseBackbone",
    "DiverseClassifier",
    "DiverseContrastive",
    "DiverseFeaturizer",
    "EmbeddingSpread",
    "PairSimilarity",
    "PositionEmbedding",
    "StreamTower",
    "TransformerEncoder",
    "build_diverse_classifier",
    "copy_variables",
    "default_stream_frontends",
    "derived_model",
]
