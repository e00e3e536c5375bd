"""A model with its own code, as GPT-BERT and LTG-BERT are published: config.json names a model type transformers does
not know, and its auto_map names the classes in this file. One backbone serves as a causal and as a masked LM (the
same weights, read with or without the causal mask, as GPT-BERT's), and its forward takes only input_ids and
attention_mask: no position ids, no key/value cache, no 4D masks. Written into model folders by tests/test_own_code.py.
"""
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, MaskedLMOutput


class TinyCustomConfig(PretrainedConfig):
    model_type = "tinycustom"

    def __init__(self, vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, max_sequence_length=128, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_heads, self.max_sequence_length = num_heads, max_sequence_length


class TinyCustomModel(PreTrainedModel):
    config_class = TinyCustomConfig
    causal = False

    def __init__(self, config):
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_sequence_length, config.hidden_size)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.hidden_size, config.num_heads, 4 * config.hidden_size, dropout=0.0,
                                       batch_first=True)
            for _ in range(config.num_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, input_ids, attention_mask=None):
        n = input_ids.shape[1]
        x = self.embedding(input_ids) + self.position(torch.arange(n, device=input_ids.device))
        ahead = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).triu(1)
        block = ahead if self.causal else torch.zeros_like(ahead)
        pad = None if attention_mask is None else attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_mask=block, src_key_padding_mask=pad)
        return BaseModelOutput(last_hidden_state=x)


class TinyCustomForCausalLM(TinyCustomModel):
    causal = True

    def __init__(self, config):
        super().__init__(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None):
        return CausalLMOutput(logits=self.head(super().forward(input_ids, attention_mask).last_hidden_state))


class TinyCustomForMaskedLM(TinyCustomForCausalLM):
    causal = False

    def forward(self, input_ids, attention_mask=None, labels=None):
        return MaskedLMOutput(logits=self.head(TinyCustomModel.forward(self, input_ids, attention_mask)
                                               .last_hidden_state))
