"""Sequence classification on the mean of an encoder's token states.

Sentence-transformers checkpoints (all-MiniLM-L6-v2, the default base model) were trained to
represent a sentence by the mean of its token states, not by the [CLS] token that
`AutoModelForSequenceClassification` feeds its head. This head reads what they learned.

The module imports only torch and transformers: `save_pretrained` copies it beside the
weights (`auto_map` in config.json), so plain transformers loads a saved model with
`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_KEY = "classifier_pooling"


def mean_of_tokens(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token states the attention mask keeps (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Any `AutoModel` encoder, mean pooling, dropout and one linear layer.

    The config is the encoder's own (BertConfig, RobertaConfig, ...) with
    `classifier_pooling: mean`, so the encoder is rebuilt from it; an encoder's own [CLS]
    pooler is dropped (its weights would never receive a gradient).
    """

    config_class = PretrainedConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: PretrainedConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.classifier.weight.data.normal_(std=getattr(config, "initializer_range", 0.02))
        self.classifier.bias.data.zero_()
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Loads with the encoder's own config class (BertConfig, ...), not the generic one."""
        if config is None:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        return super().from_pretrained(
            pretrained_model_name_or_path, *args, config=config, **kwargs
        )

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from the encoder checkpoint and `__init__`; nothing to re-draw."""

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        states = self.encoder(**inputs, **kwargs).last_hidden_state
        logits = self.classifier(self.dropout(mean_of_tokens(states, attention_mask)))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


# save_pretrained copies this file beside the weights and names it in config.json's auto_map.
MeanPoolingForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
