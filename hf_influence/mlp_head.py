"""A pretrained encoder with a multi-layer perceptron classification head (the head of Anand et al. 2023).

"Influence Scores at Scale for Efficient Language Data Sampling" (Anand, Tan, Minakova, EMNLP 2023) fine-tunes
BERT-small on SNLI with "a 3-layer MLP, intermediate dim 64, dropout 0.1" on top of the encoder (256 for BERT-base),
where transformers' own `...ForSequenceClassification` heads are a single linear layer (BERT: on the tanh pooler).

`MLPHeadForSequenceClassification` wraps any encoder `AutoModel` can build:

    logits = W_L(drop(act(... act(W_1(drop(pool(encoder(x))))) ...)))

with `L = head_layers` linear layers (`head_hidden_size` wide between them), dropout before each of them, and
`pool` the first token's final hidden state (`"cls"`), the encoder's pooler output (`"pooler"`) or the mean over
the attention mask (`"mean"`). The paper names neither the pooling, the activation nor the initialisation; the
defaults here are `"cls"`, ReLU and PyTorch's own `nn.Linear` initialisation for the head.

The config (`model_type="hf_influence_mlp_head"`) nests the encoder's config, so checkpoints round-trip through
`save_pretrained` / `from_pretrained` and, once this module is imported (`import hf_influence.mlp_head`, which the
`hf_influence.checkpoints.load_checkpoint` does), through `AutoConfig` and `AutoModelForSequenceClassification`.

Example:

```python
>>> from hf_influence.mlp_head import MLPHeadForSequenceClassification
>>> model = MLPHeadForSequenceClassification.from_encoder("google/bert_uncased_L-4_H-512_A-8", num_labels=3,
...                                                        head_hidden_size=64)
```
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "hf_influence_mlp_head"
POOLINGS = ("cls", "pooler", "mean")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLPHeadConfig(PretrainedConfig):
    """Configuration of [`MLPHeadForSequenceClassification`].

    Args:
        encoder (`dict` or `PretrainedConfig`, *optional*): the encoder's config (a dict must carry its
            `model_type`).
        head_hidden_size (`int`, defaults to 64): width of the hidden layers of the head (the paper: 64 for
            BERT-small, 256 for BERT-base).
        head_layers (`int`, defaults to 3): number of linear layers in the head (at least 1).
        head_dropout (`float`, defaults to 0.1): dropout before each linear layer of the head.
        head_activation (`str`, defaults to `"relu"`): `"relu"`, `"gelu"` or `"tanh"`.
        pooling (`str`, defaults to `"cls"`): `"cls"` (first token's final hidden state), `"pooler"` (the
            encoder's `pooler_output`) or `"mean"` (mean over the attention mask).
        pad_token_id (`int`, *optional*): the padding id (default: the encoder's).
        **kwargs: the usual `PretrainedConfig` arguments (`num_labels`, `id2label`, ...).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder: dict[str, Any] | PretrainedConfig | None = None,
        head_hidden_size: int = 64,
        head_layers: int = 3,
        head_dropout: float = 0.1,
        head_activation: str = "relu",
        pooling: str = "cls",
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder, PretrainedConfig):
            encoder = encoder.to_dict()
        if encoder is not None and "model_type" not in encoder:
            raise ValueError("MLPHeadConfig(encoder=...) needs the encoder config's 'model_type'.")
        if head_layers < 1:
            raise ValueError(f"head_layers must be at least 1, got {head_layers}.")
        if head_hidden_size < 1:
            raise ValueError(f"head_hidden_size must be positive, got {head_hidden_size}.")
        if not 0.0 <= head_dropout < 1.0:
            raise ValueError(f"head_dropout must lie in [0, 1), got {head_dropout}.")
        if head_activation not in ACTIVATIONS:
            raise ValueError(f"Unknown head_activation {head_activation!r}; valid: {', '.join(ACTIVATIONS)}.")
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}.")
        self.encoder = encoder
        self.head_hidden_size = head_hidden_size
        self.head_layers = head_layers
        self.head_dropout = head_dropout
        self.head_activation = head_activation
        self.pooling = pooling
        super().__init__(**kwargs)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (encoder or {}).get("pad_token_id")

    def encoder_config(self) -> PretrainedConfig:
        """The encoder's config object."""
        if self.encoder is None:
            raise ValueError("This MLPHeadConfig has no encoder config; build it with MLPHeadConfig(encoder=...).")
        settings = dict(self.encoder)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


class MLPHeadForSequenceClassification(PreTrainedModel):
    """An `AutoModel` encoder with an MLP classification head (see the module docstring for the equation).

    The loss is cross-entropy for integer labels (mean-squared error for a single output with float labels), as in
    transformers' own sequence classifiers. `base_model_prefix` is `"encoder"`, so "the encoder" and "the head" are
    told apart the same way as for transformers' models (e.g. a separate head learning rate).
    """

    config_class = MLPHeadConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MLPHeadConfig) -> None:
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.encoder = AutoModel.from_config(encoder_config)
        width = encoder_config.hidden_size
        activation = ACTIVATIONS[config.head_activation]
        layers: list[nn.Module] = []
        for index in range(config.head_layers):
            last = index == config.head_layers - 1
            layers += [nn.Dropout(config.head_dropout),
                       nn.Linear(width, config.num_labels if last else config.head_hidden_size)]
            if not last:
                layers.append(activation())
            width = config.head_hidden_size
        self.head = nn.Sequential(*layers)
        self._drop_unused_pooler()
        self.post_init()

    def _drop_unused_pooler(self) -> None:
        """Without `pooling="pooler"` the encoder's pooler would hold parameters that get no gradient (DDP without
        `find_unused_parameters` refuses them, and they would be saved for nothing)."""
        if self.config.pooling != "pooler" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None

    def _init_weights(self, module: nn.Module) -> None:
        """Head: PyTorch's own `nn.Linear` initialisation (what a hand-written MLP head gets; the encoders' normal(0,
        0.02) would shrink the signal ~10x per layer of a narrow MLP, and a fresh 3-layer head would then barely
        learn); encoder modules: the encoder's own initialisation."""
        if any(module is head_module for head_module in self.head.modules()):
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        elif hasattr(self.encoder, "_init_weights"):
            self.encoder._init_weights(module)

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str | os.PathLike,
        config: MLPHeadConfig | None = None,
        **kwargs: Any,
    ) -> MLPHeadForSequenceClassification:
        """A pretrained encoder with a freshly initialised head (seed it with `transformers.set_seed` first).

        Args:
            encoder_name_or_path (`str` or `os.PathLike`): anything `AutoModel.from_pretrained` loads (a
                `...ForSequenceClassification` checkpoint too: its encoder is kept, its head dropped).
            config (`MLPHeadConfig`, *optional*): the full config (its `encoder` entry must describe that encoder);
                by default built from the encoder's config and the `MLPHeadConfig` arguments among `kwargs`.
            **kwargs: `MLPHeadConfig` arguments (`num_labels`, `head_hidden_size`, `head_layers`, `head_dropout`,
                `head_activation`, `pooling`, `id2label`, ...) when `config` is None; everything else goes to
                `AutoModel.from_pretrained` (e.g. `dtype`, `revision`).
        """
        config_keys = {"num_labels", "head_hidden_size", "head_layers", "head_dropout", "head_activation", "pooling",
                       "id2label", "label2id", "pad_token_id", "problem_type"}
        config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in config_keys}
        if config is not None and config_kwargs:
            raise ValueError(f"Pass either config or {', '.join(sorted(config_kwargs))}, not both.")
        if config is None:
            encoder = AutoModel.from_pretrained(encoder_name_or_path, **kwargs)
            config = MLPHeadConfig(encoder=encoder.config, **config_kwargs)
        else:
            encoder = AutoModel.from_pretrained(encoder_name_or_path, config=config.encoder_config(), **kwargs)
        model = cls(config)
        model.encoder = encoder
        model._drop_unused_pooler()
        return model.to(next(encoder.parameters()).dtype)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def _pool(self, outputs: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
        pooling = self.config.pooling
        if pooling == "pooler":
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise ValueError(f"The {type(self.encoder).__name__} encoder has no pooler output; use pooling='cls' "
                                 "or 'mean'.")
            return pooled
        hidden = outputs.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None or attention_mask.dim() != 2:
            return hidden.mean(1)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        outputs = self.encoder(**kwargs, return_dict=True)
        logits = self.head(self._pool(outputs, attention_mask))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1 and labels.is_floating_point():
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        if return_dict is False:
            rest = (logits, outputs.hidden_states, outputs.attentions)
            return ((loss,) if loss is not None else ()) + rest
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


def loading_instructions(repo_or_path: str) -> str:
    """Markdown telling a model card's reader how to load a checkpoint of this model type."""
    return (
        "This checkpoint has an MLP classification head (`model_type: hf_influence_mlp_head`, "
        "`hf_influence.mlp_head.MLPHeadForSequenceClassification`). Import `hf_influence.mlp_head` first, so that "
        "the Auto classes know the type:\n\n"
        "```python\n"
        "import hf_influence.mlp_head  # registers the model type\n"
        "from transformers import AutoModelForSequenceClassification\n\n"
        f'model = AutoModelForSequenceClassification.from_pretrained("{repo_or_path}")\n'
        "```"
    )


def _register() -> None:
    """Make `AutoConfig` / `AutoModelForSequenceClassification` resolve `model_type="hf_influence_mlp_head"`."""
    try:
        AutoConfig.register(MODEL_TYPE, MLPHeadConfig)
    except ValueError:  # already registered (module reloaded)
        pass
    try:
        AutoModelForSequenceClassification.register(MLPHeadConfig, MLPHeadForSequenceClassification)
    except ValueError:
        pass


_register()
