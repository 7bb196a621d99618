"""The hyperparameters of :class:`md4.nn.transformer.Transformer` and their validation, with the MD4 release's
text8 and OpenWebText networks (:meth:`TransformerConfig.release_text8`,
:meth:`TransformerConfig.release_openwebtext`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from md4.limits import check_layers

# Activation of each gated MLP type (the release's activation_map).
MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {"glu": nn.Sigmoid, "swiglu": nn.SiLU, "geglu": nn.GELU}
TIME_CONDITIONINGS = ("adaln_zero", "none")
MODULATION_ACTS = ("silu", "mlp")
INITS = ("gpt2", "release")
TIME_EMBEDDINGS = ("md4", "release")


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`md4.nn.transformer.Transformer`; validated on construction."""

    vocab_size: int
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_type: str = "swiglu"
    mlp_hidden_multiple: int = 32
    time_conditioning: str = "adaln_zero"
    num_classes: int | None = None
    # The shape of one example (filled from the data); used only by axial_positions.
    data_shape: tuple[int, ...] | None = None
    outside_embed_dim: int | None = None
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Optional learned absolute positions (added to RoPE) for sequences up to this length. RoPE alone
    # cannot tell positions apart in an all-mask input, so position-dependent data (pixels, fixed
    # layouts) needs it; stationary text does not.
    max_positions: int | None = None
    # Optional learned positions per axis of data_shape (e.g. H, W and C tables for an image), summed and
    # added to the token embeddings: a 2-D position encoding for pixels. Inputs must then have data_shape.
    axial_positions: bool = False
    # Width of the conditioning vector feeding adaLN (None: dim; release: 64). At full width the per-block
    # modulation (cond_dim -> 6 dim) is about a third of a 12 x 768 model's parameters.
    cond_dim: int | None = None
    # Width of the sinusoidal time features (release: 64).
    time_features: int = 256
    # Layout of those features (see timestep_embedding): "md4" or "release".
    time_embedding: str = "md4"
    # Hidden width of the time MLP (None: the conditioning width; release: 256 = 4 * 64).
    time_hidden: int | None = None
    # Biases in the time MLP and in every adaLN modulation (release: True).
    cond_bias: bool = False
    # Activation before each adaLN modulation: "silu", or "mlp" for the MLP type's own (release: "mlp").
    modulation_act: str = "silu"
    # Bias on the outside embedding's projection to width dim (release: True); unused without one.
    embed_bias: bool = False
    # Dropout on the token embedding (release: only for a full-width embedding, so False for text8).
    embed_dropout: bool = True
    # Residual dropout as Dropout1d, one mask per (example, channel) shared by all positions (release: True).
    channel_dropout: bool = False
    # Dropout on the attention probabilities (release: the same rate as dropout).
    attn_dropout: float = 0.0
    # "gpt2": N(0, 0.02) with depth-scaled residual projections; "release": the release's lecun-normal scheme.
    init: str = "gpt2"
    # Causal attention: position n attends to positions <= n only (row-major), for an autoregressive model
    # (model.kind=ar); the network then also decodes incrementally with a KV cache.
    causal: bool = False

    def __post_init__(self) -> None:
        if self.mlp_type not in MLP_ACTIVATIONS:
            raise ValueError(f"Unknown mlp_type {self.mlp_type!r}; use one of {sorted(MLP_ACTIVATIONS)}.")
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(
                f"Unknown time_conditioning {self.time_conditioning!r}; use one of {list(TIME_CONDITIONINGS)}."
            )
        if self.modulation_act not in MODULATION_ACTS:
            raise ValueError(f"Unknown modulation_act {self.modulation_act!r}; use one of {list(MODULATION_ACTS)}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown init {self.init!r}; use one of {list(INITS)}.")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "mlp_hidden_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        check_layers("n_layers", self.n_layers)
        for name in ("num_classes", "outside_embed_dim", "max_positions", "cond_dim", "time_hidden"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or a positive integer, got {value}.")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"Unknown time_embedding {self.time_embedding!r}; use one of {list(TIME_EMBEDDINGS)}.")
        if self.time_features < 4 or self.time_features % 2:
            raise ValueError(f"time_features must be an even integer of at least 4, got {self.time_features}.")
        if self.dim % self.n_heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; choose dim as a multiple of n_heads."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"Head dim dim/n_heads={self.head_dim} is odd but RoPE needs it even; change dim or n_heads."
            )
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.data_shape is not None:
            self.data_shape = tuple(self.data_shape)
            if not self.data_shape or min(self.data_shape) < 1:
                raise ValueError(f"data_shape must be a tuple of positive sizes, got {self.data_shape}.")
        if self.axial_positions and self.data_shape is None:
            raise ValueError("axial_positions=True needs data_shape, the shape of one example; set it from the data.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        """``int(8 * dim / 3)`` rounded up to a multiple of ``mlp_hidden_multiple``, as in the release."""
        m = self.mlp_hidden_multiple
        return m * -(-(8 * self.dim // 3) // m)

    @property
    def conditioning_width(self) -> int:
        return self.dim if self.cond_dim is None else self.cond_dim

    @property
    def conditioned(self) -> bool:
        """True when blocks use adaLN (time and/or class conditioning present)."""
        return self.time_conditioning != "none" or self.num_classes is not None

    @classmethod
    def _release(cls, fields: dict, overrides: dict) -> TransformerConfig:
        """The release's 12 x 768 text network (configs ``md4/text8.py`` and ``md4/openwebtext.py``):
        feature_dim 64 (conditioning width and head size), GLU MLP, adaLN-Zero with biases and the MLP's
        sigmoid, Dropout1d residual dropout, depth-scaled lecun-normal init. One rate drives both dropouts,
        as in the release, unless ``attn_dropout`` is overridden."""
        fields = dict(
            dim=768,
            n_layers=12,
            n_heads=12,
            mlp_type="glu",
            time_conditioning="adaln_zero",
            cond_dim=64,
            time_features=64,
            time_embedding="release",
            time_hidden=256,
            cond_bias=True,
            modulation_act="mlp",
            channel_dropout=True,
            init="release",
            **fields,
        )
        fields.update(overrides)
        fields.setdefault("attn_dropout", fields["dropout"])
        return cls(**fields)

    @classmethod
    def release_text8(cls, **overrides) -> TransformerConfig:
        """The release's text8 network (V = 27, 88,734,272 parameters): a 64-d outside embedding with a biased
        projection to 768, no embedding dropout, dropout 0.05 (the release's text8 sweep)."""
        text8 = {"vocab_size": 27, "outside_embed_dim": 64, "embed_bias": True, "embed_dropout": False, "dropout": 0.05}
        return cls._release(text8, overrides)

    @classmethod
    def release_openwebtext(cls, **overrides) -> TransformerConfig:
        """The release's OpenWebText network (GPT-2 tokens, V = 50257, 165,857,344 parameters): a full-width
        embedding with dropout and untied logits, dropout 0.02 (the release's OpenWebText sweep)."""
        return cls._release({"vocab_size": 50257, "dropout": 0.02}, overrides)
