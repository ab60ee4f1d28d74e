"""Sequence classification on the mean of an encoder's token states.

Mean-pooled sentence-transformers checkpoints (all-MiniLM-L6-v2, the default base model;
all-mpnet-base-v2) were trained to represent a sentence by the mean of its token states, not
by the [CLS] token that `AutoModelForSequenceClassification` feeds its head. This head reads
what they learned.

The module imports only torch and transformers: `save_pretrained` copies it beside the
weights (`auto_map` in config.json), so plain transformers loads a saved model with
`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_MAPPING

# Only finlora writes this config key (ModernBERT's own `classifier_pooling` means otherwise).
POOLING_KEY = "finlora_pooling"
HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


def saved_pooling(config: PretrainedConfig) -> str:
    """`mean` for a config this module's class wrote, `cls` for any other."""
    return getattr(config, POOLING_KEY, "cls")


def mean_of_tokens(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token states the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Any `AutoModel` encoder, mean pooling, dropout and one linear layer.

    The config is the encoder's own (BertConfig, MPNetConfig, ...) with
    `finlora_pooling: mean`, so the encoder is rebuilt from it; an encoder's own [CLS]
    pooler is dropped (its weights would never receive a gradient).
    """

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: PretrainedConfig, encoder: PreTrainedModel | None = None):
        setattr(config, POOLING_KEY, "mean")  # saved with the weights: how to load them
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()
        self.classifier.to(self.encoder.dtype)

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        """Loads with the encoder's own config class (BertConfig, ...), and with SDPA
        attention only where the encoder has it (MPNet and DeBERTa-v2 do not)."""
        if config is None:
            hub = {key: kwargs[key] for key in HUB_ARGUMENTS if key in kwargs}
            config = AutoConfig.from_pretrained(path, **hub)
        if "attn_implementation" not in kwargs:
            encoder_class = MODEL_MAPPING[type(config)]
            kwargs["attn_implementation"] = "sdpa" if encoder_class._supports_sdpa else "eager"
        return super().from_pretrained(path, *args, config=config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            attention_mask = torch.ones(shape, dtype=torch.long, device=self.device)
        inputs = {"attention_mask": attention_mask}
        for name, value in (
            ("input_ids", input_ids),
            ("token_type_ids", token_type_ids),
            ("inputs_embeds", inputs_embeds),
        ):
            if value is not None:
                inputs[name] = value
        kwargs["return_dict"] = True
        encoded = self.encoder(**inputs, **kwargs)
        pooled = mean_of_tokens(encoded.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


def load_finetuned(model_dir, **kwargs) -> PreTrainedModel:
    """A classifier finlora saved: a mean-pooling one by this class (no remote code is run),
    any other by `AutoModelForSequenceClassification`."""
    config = AutoConfig.from_pretrained(model_dir)
    if saved_pooling(config) == "mean":
        return MeanPoolingForSequenceClassification.from_pretrained(
            model_dir, config=config, **kwargs
        )
    return AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, **kwargs)


# save_pretrained copies this file beside the weights and names it in config.json's auto_map.
MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
