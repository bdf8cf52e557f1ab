"""pile_jax.models: Flax BERT-family encoders, cross-encoders and Hugging Face checkpoint I/O."""

from .config import FAMILIES, EncoderConfig
from .cross_encoder import CrossEncoder, ScoreHead
from .encoder import Embeddings, Encoder, EncoderLayer, EncoderOutput, attention_bias
from .hf_io import LoadReport, export_pretrained, load_pretrained, params_to_state_dict, state_dict_to_params
from .hub import resolve_model_path
from .reranker import Reranker
from .tokenize import DEFAULT_BUCKETS, PairTokenizer, bucketed_batches
from .features import make_features, make_featurizer
from .students import (
    INPUT_KINDS,
    STUDENT_KINDS,
    TK,
    BertDot,
    ColBERT,
    PreTT,
    TwoTowerTokenizer,
    augment_query_with_masks,
    build_student,
    colbert_maxsim,
    init_tk_embeddings_from,
    make_score_fn,
    rbf_kernel_pooling,
)

__all__ = [
    "FAMILIES", "EncoderConfig", "CrossEncoder", "ScoreHead", "Embeddings", "Encoder", "EncoderLayer",
    "EncoderOutput", "attention_bias", "LoadReport", "export_pretrained", "load_pretrained",
    "params_to_state_dict", "state_dict_to_params", "resolve_model_path", "Reranker", "DEFAULT_BUCKETS",
    "PairTokenizer", "bucketed_batches",
    "BertDot", "ColBERT", "PreTT", "TK", "build_student", "make_score_fn", "make_featurizer", "make_features", "TwoTowerTokenizer",
    "init_tk_embeddings_from", "colbert_maxsim", "rbf_kernel_pooling", "augment_query_with_masks",
    "STUDENT_KINDS", "INPUT_KINDS",
]
