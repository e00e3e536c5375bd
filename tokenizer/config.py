"""The `data` and `tokenizer` sections of a run config (read by `python -m tokenizer prepare` and by `train`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import ConfigError, field


@dataclass
class DataConfig:
    train_dir: str = field(
        "", "folder of BabyLM training files (<domain>.train or <domain>.txt); any subset of domains"
    )
    dev_dir: str = field("", "folder of dev files in the same layout; empty = no dev-loss evaluation")
    domains: list[str] = field(
        [], "use only these domains (file stems such as aochildes, switchboard); empty = every recognised file"
    )
    demo: bool = field(
        False, "generate the embedded demo corpus into train_dir/dev_dir (pairs beside them) if they do not exist"
    )
    demo_sentences: int = field(20000, "training sentences the demo grammar generates (dev gets a tenth)", ge=10)
    block_size: int = field(128, "tokens per packed training block", ge=2)
    packing: bool = field(
        True,
        "true: lines concatenated and cut into full blocks; false: one line per example, truncated to block_size and "
        "padded",
    )
    train_fraction: float = field(
        1.0, "fraction of training blocks to use (seeded subset), for quick grid points", gt=0, le=1
    )
    dev_blocks: int = field(
        0, "use at most this many dev blocks (a seeded subset, data.seed) for a quicker dev loss on a large dev set; "
        "0 = all", ge=0)
    mlm_probability: float = field(0.15, "share of tokens masked per block when the model is a masked LM", gt=0, lt=1)
    seed: int = field(42, "seed for the demo grammar and the train_fraction and dev_blocks subsets", ge=0, le=2**32 - 1)
    num_proc: int = field(1, "processes for tokenizing with datasets.map", ge=1, resume=True)
    cache_dir: str = field(
        "cache", "where cleaned text, trained tokenizers and packed blocks are cached (fingerprinted)",
        resume=True,
    )

    def check(self) -> None:
        if not self.train_dir:
            raise ConfigError(
                "data.train_dir",
                "is empty; set it to a folder of BabyLM files, e.g. data.train_dir=/data/babylm/train_10M",
            )


@dataclass
class TokenizerConfig:
    type: Literal["from_scratch", "pretrained", "pretrained_hf"] = field(
        "from_scratch",
        "from_scratch: train byte-level BPE on data.train_dir; pretrained: a local folder; pretrained_hf: a Hub name",
    )
    vocab_size: int = field(
        16000,
        "vocabulary size of a from_scratch tokenizer (must equal model.vocab_size; 256 bytes and the specials need "
        "300)",
        ge=300,
    )  # tokenizer.bpe.MIN_VOCAB
    min_frequency: int = field(2, "minimum pair frequency for a BPE merge (from_scratch)", ge=1)
    name_or_path: str = field(
        "", "pretrained: the tokenizer folder; pretrained_hf: the Hub name (a local folder also works)"
    )

    def check(self) -> None:
        if self.type != "from_scratch" and not self.name_or_path:
            raise ConfigError(
                "tokenizer.name_or_path",
                f"is empty but tokenizer.type is {self.type}; name the tokenizer folder or Hub model",
            )


@dataclass
class PrepareConfig:
    """What `python -m tokenizer prepare` reads from a run YAML."""

    data: DataConfig = field(DataConfig(), "where the corpus is and how it is packed")
    tokenizer: TokenizerConfig = field(TokenizerConfig(), "which tokenizer, trained or loaded")

    def check(self) -> None:
        self.data.check()
        self.tokenizer.check()
