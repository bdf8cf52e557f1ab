"""EncoderConfig: the architecture of a BERT-family encoder as plain, hashable data.

Contract:
  * ``EncoderConfig`` is a frozen dataclass (usable as a flax module attribute and as a
    static ``jit`` argument). ``replace(**changes)`` returns a modified copy.
  * ``EncoderConfig.from_hf(hf_config)`` reads a ``transformers`` config object or a plain
    ``config.json`` dict of one of the supported families (``FAMILIES``); anything else raises
    ``ValueError`` naming the ``model_type``.
  * ``to_hf()`` builds the matching ``transformers`` config for ``...ForSequenceClassification``
    (``architectures`` and ``num_labels`` filled in), so exported folders load with ``AutoModel*``.
  * Parameters are always float32; ``dtype`` only selects the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FAMILIES = ("bert", "electra", "roberta", "xlm-roberta", "distilbert")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = (None, "xla", "cudnn")
ACTIVATIONS = (
    "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish", "tanh",
)

# family -> (transformers config class name, model class prefix, state-dict prefix)
_HF_NAMES = {
    "bert": ("BertConfig", "Bert", "bert"),
    "electra": ("ElectraConfig", "Electra", "electra"),
    "roberta": ("RobertaConfig", "Roberta", "roberta"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRoberta", "roberta"),
    "distilbert": ("DistilBertConfig", "DistilBert", "distilbert"),
}


def hf_prefix(family: str) -> str:
    """State-dict prefix of the base model inside ``...ForSequenceClassification``."""
    return _HF_NAMES[family][2]


def hf_architecture(family: str) -> str:
    """``architectures`` entry written on export (e.g. ``BertForSequenceClassification``)."""
    return _HF_NAMES[family][1] + "ForSequenceClassification"


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture + regularisation + numerics of a Transformer encoder with a score head.

    ``position_offset`` is 0 for absolute positions ``0..L-1`` (BERT, ELECTRA, DistilBERT);
    for RoBERTa/XLM-R it is ``pad_token_id + 1``: real tokens get positions
    ``offset, offset+1, ...`` counted over non-pad tokens, pad tokens get ``offset - 1``.
    ``type_vocab_size`` is 0 for families without token-type embeddings (DistilBERT).
    ``embedding_size`` differs from ``hidden_size`` only for ELECTRA (``embeddings_project``).

    ``attention_impl`` selects ``jax.nn.dot_product_attention``'s implementation: ``None`` (JAX
    chooses; XLA today), ``"xla"`` or ``"cudnn"`` (cuDNN flash attention; GPU, bf16 only).
    ``attention_dropout`` (dropout on the attention probabilities) is 0 by default, whatever
    the checkpoint says: no fused attention kernel has it, so a rate > 0 makes training take
    the written-out einsum + softmax path (see ``encoder.py``).
    """

    family: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_offset: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    classifier_dropout: float | None = None
    dtype: str = "float32"
    remat: bool = False
    num_labels: int = 1
    attention_impl: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"EncoderConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"EncoderConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"EncoderConfig.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            raise ValueError("EncoderConfig.attention_impl='cudnn' (cuDNN flash attention) needs dtype='bfloat16', "
                             f"got {self.dtype!r}; use attention_impl=None or 'xla' for float32")
        if not 0.0 <= float(self.attention_dropout) < 1.0:
            raise ValueError(f"EncoderConfig.attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"EncoderConfig.hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"EncoderConfig.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        for name in ("num_layers", "num_heads", "hidden_size", "intermediate_size", "vocab_size",
                     "max_position_embeddings", "num_labels"):
            if int(getattr(self, name)) < (0 if name == "num_layers" else 1):
                raise ValueError(f"EncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.hidden_size)
        if self.family != "electra" and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) != hidden_size ({self.hidden_size}) "
                f"is only supported for family 'electra', not {self.family!r}")
        if self.family == "distilbert" and self.type_vocab_size:
            raise ValueError("family 'distilbert' has no token-type embeddings; set type_vocab_size=0")

    # -- convenience -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def head_dropout(self) -> float:
        """Dropout rate inside the score head (HF: ``classifier_dropout`` or the hidden dropout)."""
        return self.hidden_dropout if self.classifier_dropout is None else float(self.classifier_dropout)

    def replace(self, **changes: Any) -> "EncoderConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- transformers interop ----------------------------------------------------------
    @classmethod
    def from_hf(cls, hf_config: Any, **overrides: Any) -> "EncoderConfig":
        """Build from a ``transformers`` config object or a ``config.json`` dict.

        ``overrides`` (e.g. ``num_layers=2, dtype="bfloat16", num_labels=1``) are applied last;
        ``num_labels`` is never read from the checkpoint (default 1: a single relevance logit),
        nor is the attention-probability dropout (pile_jax's default 0 keeps the fused attention
        path; pass ``attention_dropout=`` to turn it on).
        Non-absolute ``position_embedding_type`` raises ``ValueError``.
        """
        get = _getter(hf_config)
        model_type = get("model_type")
        if model_type is None:
            raise ValueError("the Hugging Face config has no 'model_type'; cannot tell the model family")
        family = str(model_type).replace("_", "-")
        if family not in FAMILIES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; pile_jax supports {', '.join(FAMILIES)}")
        pet = get("position_embedding_type", "absolute")
        if pet not in (None, "absolute"):
            raise ValueError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")

        if family == "distilbert":
            hidden = int(get("dim", get("hidden_size", 768)))
            kw = dict(
                vocab_size=int(get("vocab_size")), hidden_size=hidden,
                num_layers=int(get("n_layers", get("num_hidden_layers", 6))),
                num_heads=int(get("n_heads", get("num_attention_heads", 12))),
                intermediate_size=int(get("hidden_dim", 4 * hidden)),
                max_position_embeddings=int(get("max_position_embeddings", 512)),
                type_vocab_size=0, embedding_size=hidden, layer_norm_eps=1e-12,
                hidden_act=str(get("activation", "gelu")),
                pad_token_id=int(_or(get("pad_token_id"), 0)), position_offset=0,
                hidden_dropout=float(get("dropout", 0.1)),
                classifier_dropout=float(get("seq_classif_dropout", 0.2)),
            )
        else:
            hidden = int(get("hidden_size"))
            roberta_like = family in ("roberta", "xlm-roberta")
            pad = int(_or(get("pad_token_id"), 1 if roberta_like else 0))
            cd = get("classifier_dropout")
            kw = dict(
                vocab_size=int(get("vocab_size")), hidden_size=hidden,
                num_layers=int(get("num_hidden_layers")),
                num_heads=int(get("num_attention_heads")),
                intermediate_size=int(get("intermediate_size")),
                max_position_embeddings=int(get("max_position_embeddings", 512)),
                type_vocab_size=int(get("type_vocab_size", 2)),
                embedding_size=int(get("embedding_size", hidden)) if family == "electra" else hidden,
                layer_norm_eps=float(get("layer_norm_eps", 1e-12)),
                hidden_act=str(get("hidden_act", "gelu")),
                pad_token_id=pad, position_offset=pad + 1 if roberta_like else 0,
                hidden_dropout=float(get("hidden_dropout_prob", 0.1)),
                classifier_dropout=None if cd is None else float(cd),
            )
        kw["family"] = family
        # num_labels is the caller's choice (a score head is 1 by default), not the checkpoint's.
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self):
        """The matching ``transformers`` config (for ``...ForSequenceClassification``)."""
        import transformers

        cls_name = _HF_NAMES[self.family][0]
        config_cls = getattr(transformers, cls_name)
        common = dict(
            vocab_size=self.vocab_size, max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id, num_labels=self.num_labels,
            architectures=[hf_architecture(self.family)],
        )
        if self.family == "distilbert":
            cfg = config_cls(
                dim=self.hidden_size, n_layers=self.num_layers, n_heads=self.num_heads,
                hidden_dim=self.intermediate_size, activation=self.hidden_act,
                dropout=self.hidden_dropout, attention_dropout=self.attention_dropout,
                seq_classif_dropout=self.head_dropout, **common)
        else:
            extra = {}
            if self.family == "electra":
                extra["embedding_size"] = self.embedding_size
            if self.family in ("roberta", "xlm-roberta"):
                extra.update(bos_token_id=0, eos_token_id=2)
            cfg = config_cls(
                hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
                type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
                hidden_act=self.hidden_act, hidden_dropout_prob=self.hidden_dropout,
                attention_probs_dropout_prob=self.attention_dropout,
                classifier_dropout=self.classifier_dropout, **extra, **common)
        return cfg


def _or(value, default):
    return default if value is None else value


def _getter(hf_config: Any):
    if isinstance(hf_config, Mapping):
        return lambda key, default=None: hf_config.get(key, default)
    return lambda key, default=None: getattr(hf_config, key, default)
