"""pile_jax.models: Flax BERT-family encoders, cross-encoders and Hugging Face checkpoint I/O."""

from .config import FAMILIES, EncoderConfig
from .cross_encoder import CrossEncoder, ScoreHead
from .encoder import Embeddings, Encoder, EncoderLayer, EncoderOutput, attention_bias
from .hf_io import LoadReport, export_pretrained, load_pretrained, params_to_state_dict, state_dict_to_params
from .hub import resolve_model_path
from .reranker import Reranker
from .tokenize import DEFAULT_BUCKETS, PairTokenizer, bucketed_batches

__all__ = [
    "FAMILIES", "EncoderConfig", "CrossEncoder", "ScoreHead", "Embeddings", "Encoder", "EncoderLayer",
    "EncoderOutput", "attention_bias", "LoadReport", "export_pretrained", "load_pretrained",
    "params_to_state_dict", "state_dict_to_params", "resolve_model_path", "Reranker", "DEFAULT_BUCKETS",
    "PairTokenizer", "bucketed_batches",
]
