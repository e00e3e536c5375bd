"""Load a Hugging Face model folder for scoring, with one-line errors for the usual mistakes.

`split_head` finds the model's backbone and its output head so that the scorer can run the
head only on the positions it needs (a few per sequence for masked LMs). It is checked once
against the model's own forward pass; models whose head does more than that (logit
soft-capping, scaling) fall back to the full forward, which gives the same numbers.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError, reading, summary

BACKENDS = ("causal", "mlm", "mntp")  # mntp: a masked LM that predicts the next token (2025 convention)


def backend_for(objective: str) -> str:
    """The scoring backend of a model trained with `objective` (causal | masked, the word every config uses). The
    backends keep the 2025 pipeline's own names (its --backend flag and its submission file's name)."""
    return {"causal": "causal", "masked": "mlm"}[objective]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    backend: str
    device: torch.device
    max_length: int  # positions the model can attend to
    prefix_id: int | None  # causal: the token every sentence is scored after
    prefix_note: str  # which token that is, for the log
    path: str = ""


def pick_device(device: str) -> torch.device:
    """`auto` (a GPU when there is one), `cpu`, `cuda`, `cuda:N`; a GPU that is not there is one error line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
            raise UserError(f"--device {device}: {build}; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {device}: there are only {torch.cuda.device_count()} GPU(s) (cuda:0..); pick one of them"
            )
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: only cpu and cuda devices are supported; use auto, cpu or cuda")
    return dev


def device_name(text: str) -> str:
    """An argparse `type=` for `--device`: the name, once `pick_device` has accepted it (refused as the command line
    is read, before anything is loaded or written)."""
    pick_device(text)
    return text


def positions(cfg, default: int = 2048) -> int:
    """How many positions the model can attend to, from its config (`default` where the config names none;
    `max_sequence_length` is GPT-BERT's and LTG-BERT's name)."""
    count = (getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
             or getattr(cfg, "max_sequence_length", None) or default)
    if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        count -= (cfg.pad_token_id or 0) + 1  # RoBERTa's positions start after padding_idx
    return int(count)


def check_max_length(override: int | None, cfg, path: str) -> None:
    """`--max-length` as given: refused where the model has fewer positions (no silent clamping)."""
    limit = positions(cfg)
    if override is not None and not 1 <= override <= limit:
        raise UserError(f"--max-length {override}: the model {path} has {limit} positions; give 1 to {limit}")


def _max_length(model, tokenizer, override: int | None, path: str) -> int:
    check_max_length(override, model.config, path)
    if override is not None:
        return override
    limit = positions(model.config)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


@contextlib.contextmanager
def loading_bars(show: bool):
    """Transformers' weight-loading bar only where progress is shown: without it, evaluating many
    models (every milestone of a grid) would print one bar per model."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


TRUST_FLAG = "--trust-remote-code"  # what lets a model's own code run (python -m eval, eval finetune)
ONLY_IF_TRUSTED = ", which runs only if you trust it: read it, then pass "


def code_files(auto_map: dict) -> list[str]:
    """The Python files an `auto_map` names ("modeling_x.Class", "repo--modeling_x.Class", or a tokenizer's pair)."""
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(r, str)]
    return sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})


def check_own_code(folder: Path, what: str, trust: bool, trust_flag: str | None) -> None:
    """A folder whose model type transformers does not know, with the code for it beside config.json (`auto_map`, as
    GPT-BERT and LTG-BERT are published): refused in one line unless `trust` (that code then runs in this process).
    `trust_flag`: how the user allows it here (None: this project does not run a model's own code for `what`).
    Checked before transformers is asked, which would otherwise prompt on the terminal and then fail."""
    import json

    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # reported, naming the file, where transformers reads it
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    if trust or not isinstance(auto_map, dict):
        return
    from transformers import CONFIG_MAPPING

    kind = raw.get("model_type")
    if isinstance(kind, str) and kind in CONFIG_MAPPING:
        return  # transformers' own class serves it, as from_pretrained does unless trust_remote_code is set
    code = ", ".join(code_files(auto_map)) or "named by its auto_map"
    where = f"{folder / 'config.json'}: model type {kind!r} is defined by the Python code in its folder ({code})"
    if trust_flag is None:
        raise UserError(f"{where}; this project runs a model's own code only to evaluate it (python -m eval "
                        f"{TRUST_FLAG}), not as {what}: use a model of a transformers architecture")
    raise UserError(f"{where}{ONLY_IF_TRUSTED}{trust_flag}")


@contextlib.contextmanager
def own_code_imports(folder: Path):
    """A model's own code that imports packages this environment lacks (transformers checks them before running it):
    one line that says to install them, not to save the model again (and not transformers' log line per package
    before it)."""
    logger = logging.getLogger("transformers.dynamic_module_utils")
    drop = logging.Filter()
    drop.filter = lambda record: not str(record.msg).startswith("Encountered exception while importing")
    logger.addFilter(drop)
    try:
        yield
    except ImportError as exc:
        raise UserError(f"{folder}: the model's own code needs what this environment lacks ({summary(exc, 200)}); "
                        "install it into this project's .venv, then run the same command again") from None
    finally:
        logger.removeFilter(drop)


def load_config(folder: Path, what: str, fix: str, trust: bool = False, trust_flag: str | None = None):
    """The folder's config.json as a transformers config; an unreadable one is one line naming it. A model with its
    own code: `check_own_code`."""
    from transformers import AutoConfig

    check_own_code(folder, what, trust, trust_flag)
    with reading(folder / "config.json", f"{what}'s config", fix), own_code_imports(folder):
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust)


def load_model_folder(folder: Path, auto, what: str, fix: str, config=None, trust: bool = False,
                      unused_ok: bool = False, **kwargs):
    """`auto.from_pretrained(folder)` with every way a saved folder can be broken (a truncated or
    corrupt safetensors, a config.json that disagrees with the weights, an unreadable config) as one
    error line naming the folder. Used for every model this project loads: evaluated models,
    teachers, warm starts, references. `config`: the folder's config, when the caller has read it.
    `trust`: run the model's own code (`check_own_code`). `unused_ok`: tensors the files hold that this class has no
    place for are expected (the LM head, when `auto` is AutoModel)."""
    config_file = folder / "config.json"
    config = config if config is not None else load_config(folder, what, fix)
    mismatch = shape_mismatch(folder, auto, config, fix, trust)
    if mismatch is not None:
        raise UserError(f"{config_file} does not fit the weights beside it ({mismatch}); {fix}")
    with reading(folder, f"{what} ({config.model_type})", fix), own_code_imports(folder), without_load_report():
        model, info = auto.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                           trust_remote_code=trust, **kwargs)
    if unused_ok:
        info = {**info, "unexpected_keys": []}
    mismatch = missing_or_unused(info)
    if mismatch is not None:  # transformers would start the missing tensors from random values and go on
        raise UserError(f"{config_file} does not fit the weights beside it ({mismatch}); {fix}")
    return model


def check_finite_weights(tensors: dict, where: str) -> None:
    """Refuse (one line) weights that hold NaN or infinite values: the export of a run that diverged. A teacher or a
    warm start like that would write a whole cache of NaN, or stop its student at the first step with a non-finite
    loss whose message names the learning rate."""
    import torch

    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise UserError(f"{where}: its weights hold NaN or infinite values ({bad[0]}{more}), as a run that diverged "
                        "leaves them: use an earlier checkpoint of it (its checkpoints/ or milestones/), or train it "
                        "again")


def missing_or_unused(info: dict) -> str | None:
    """What `from_pretrained`'s loading info says the config and the weights disagree on, or None: tensors the
    config builds that no weights file holds, and tensors the files hold that the config has no place for."""
    def some(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if info.get("missing_keys"):
        parts.append(f"the config builds {len(info['missing_keys'])} tensors the weights lack: "
                     f"{some(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        parts.append(f"the weights hold {len(info['unexpected_keys'])} tensors the config has no place for: "
                     f"{some(info['unexpected_keys'])}")
    return "; ".join(parts) or None


@contextlib.contextmanager
def without_load_report():
    """transformers logs a table of missing and unused tensors while loading; `missing_or_unused` says it in a line."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = logging.Filter()
    drop.filter = lambda record: "LOAD REPORT" not in str(record.msg)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def check_embedding(model, tokenizer, folder: Path) -> None:
    """Every id the tokenizer can give has a row in the model's embedding (a folder holding another model's
    tokenizer would otherwise fail mid-scoring, or read the wrong rows). A model with its own code that does not say
    where its embedding is: its config's vocab_size counts the rows."""
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (NotImplementedError, AttributeError):
        rows = int(model.config.vocab_size)
    if len(tokenizer) > rows:
        raise UserError(
            f"{folder}: the tokenizer there has {len(tokenizer)} tokens, the model's embedding only {rows} rows; the "
            f"folder holds another model's tokenizer: save the model's own tokenizer there with save_pretrained"
        )


def shape_mismatch(folder: Path, auto, config, fix: str, trust: bool = False) -> str | None:
    """The first tensor whose shape in the safetensors headers differs from what config.json builds, or None."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    try:
        with torch.device("meta"):  # shapes only, no memory
            built = auto.from_config(config, trust_remote_code=trust)
            expected = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 - a value transformers accepts in the config but cannot build from
        raise UserError(f"{folder / 'config.json'}: its values do not build a {config.model_type} model "
                        f"({summary(exc, 160)}); {fix}") from None
    for file in files:
        with reading(file, "the weights file", fix), safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                if name in expected and shape != expected[name]:
                    return f"{file.name} holds {name} as {list(shape)}, the config makes it {list(expected[name])}"
    return None


def unfinished_run(folder: Path) -> str | None:
    """Why `folder`, the `model/` of a run directory, is not final (a run writes its DONE last, once model/ is whole:
    an export that failed on a full disk left half a model), or None for a finished run's model and any other
    folder."""
    run = folder.parent
    if folder.name != "model" or not (run / "run.json").is_file() or (run / "DONE").is_file():
        return None
    try:
        status = json.loads((run / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    return f"no DONE in {run}" + (f"; its run.json says {status}" if isinstance(status, str) else "")


def check_folder(path: str) -> Path:
    """The model folder, or a one-line error; cheap, so it runs before any data is read."""
    folder = Path(path)
    if not folder.is_dir():
        if not folder.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not folder.parent.is_dir():
            raise UserError(f"{path}: no such folder; a model on the Hugging Face Hub is downloaded first, where the "
                            f"Hub is reachable (hf download {path} [--revision R] --local-dir DIR), then give DIR")
        what = "is a file, not a model folder" if folder.exists() else "model folder does not exist"
        raise UserError(f"{path}: {what}; give a folder written by save_pretrained (e.g. runs/demo/teacher/model)")
    unfinished = unfinished_run(folder)
    if unfinished is not None:
        raise UserError(f"{path}: the model of a run that has not finished ({unfinished}), which may be cut short; "
                        f"rerun its training with --resume, or give one of its milestones")
    if not (folder / "config.json").is_file():
        inside = sorted(p.parent for p in folder.glob("*/config.json"))
        if folder / "model" in inside:  # a run directory
            hint = f"it is a run directory: give its model, {folder / 'model'}"
        elif inside:  # WML's model/ holds one folder per peer
            hint = f"it holds {len(inside)} model folder(s): give one of them, e.g. {inside[0]}"
        else:
            hint = "give the folder save_pretrained wrote"
        raise UserError(f"{path}: not a Hugging Face model folder (no config.json); {hint}")
    return folder


def check_tokenizer_files(folder: Path) -> None:
    """The model folder holds a tokenizer (cheap: before anything is loaded)."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{folder}: no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}); "
                        f"save it there with tokenizer.save_pretrained")


def load_tokenizer(folder: Path, trust: bool = False):
    """The model folder's tokenizer; an unreadable one is one line naming the folder. A tokenizer whose class is code
    in the folder (tokenizer_config.json's auto_map and a tokenizer_class transformers does not have) loads only when
    `trust`: transformers would otherwise put its generic tokenizer in its place without a word."""
    import json

    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    settings = folder / "tokenizer_config.json"
    try:
        raw = json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = None  # reported, naming the folder, where transformers reads it
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    named = raw.get("tokenizer_class") if isinstance(raw, dict) else None
    if not trust and isinstance(auto_map, dict) and "AutoTokenizer" in auto_map and isinstance(named, str) \
            and tokenizer_class_from_name(named) is None:
        code = ", ".join(code_files({"AutoTokenizer": auto_map["AutoTokenizer"]}))
        raise UserError(f"{settings}: tokenizer class {named!r} is defined by the Python code in the folder "
                        f"({code}){ONLY_IF_TRUSTED}{TRUST_FLAG}")
    with reading(folder, "the tokenizer in the model folder", "save it again with tokenizer.save_pretrained"), \
            own_code_imports(folder):
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust)


def own_class(auto, config, trust: bool) -> bool:
    """Whether `auto` (AutoModelForCausalLM ...) builds the model from the model's own code: trusted, and named by its
    config's auto_map (transformers then prefers it to a class of its own)."""
    return trust and auto.__name__ in (getattr(config, "auto_map", None) or {})


def serves(auto, config, trust: bool) -> bool:
    """Whether the auto class `auto` builds a model for `config`: a transformers architecture it maps, or one the
    model's own code defines (`own_class`)."""
    return own_class(auto, config, trust) or type(config) in auto._model_mapping



def load(
    path: str, backend: str, device: str = "auto", dtype: str = "float32", max_length: int | None = None,
    trust: bool = False,
) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    folder = check_folder(path)
    check_tokenizer_files(folder)
    dev = pick_device(device)
    config = load_config(folder, "the model", "save the model again with save_pretrained", trust,
                         TRUST_FLAG)  # first: the tokenizer's loader reads it too
    tokenizer = load_tokenizer(folder, trust)
    auto = AutoModelForCausalLM if backend == "causal" else AutoModelForMaskedLM
    kind = "causal" if backend == "causal" else "masked"
    if not serves(auto, config, trust):
        other = "mlm (or mntp)" if backend == "causal" else "causal"
        raise UserError(f"{path}: a {config.model_type} model cannot be loaded as a {kind} LM; try --backend {other}")
    saved_as = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    own = own_class(auto, config, trust)  # its own code names the causal class itself (GPT-BERT, saved as masked)
    if backend == "causal" and not own and saved_as and all(a.endswith("ForMaskedLM") for a in saved_as):
        # transformers maps BERT-family configs to a *ForCausalLM too, which would score a masked LM as if causal
        raise UserError(
            f"{path}: a masked LM ({', '.join(saved_as)}) cannot be loaded as a causal LM; try --backend mlm (or mntp)"
        )
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    model = load_model_folder(
        folder, auto, f"the {kind} LM", "save the model again with save_pretrained", config, trust, dtype=torch_dtype
    )
    check_embedding(model, tokenizer, folder)
    model.to(dev).eval()
    prefix_id, note = None, ""
    if backend == "causal":
        if tokenizer.bos_token_id is not None:
            prefix_id, note = tokenizer.bos_token_id, f"BOS {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})"
        elif tokenizer.eos_token_id is not None:
            prefix_id, note = (
                tokenizer.eos_token_id,
                f"EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}), as the tokenizer has no BOS",
            )
        else:
            raise UserError(
                f"{path}: the tokenizer has neither a BOS nor an EOS token, so there is no prefix to score a "
                "sentence's "
                f"first token after; set bos_token in {folder / 'tokenizer_config.json'}"
            )
    else:
        if tokenizer.mask_token_id is None:
            raise UserError(
                f"{path}: the tokenizer has no mask token, which pseudo-log-likelihood scoring needs; set mask_token "
                "in "
                f"{folder / 'tokenizer_config.json'} or use --backend causal"
            )
        if tokenizer.eos_token is not None:
            note = f"empty contexts become the EOS text {tokenizer.eos_token!r}"
        elif tokenizer.sep_token is not None:
            note = f"empty contexts become the SEP text {tokenizer.sep_token!r}, as the tokenizer has no EOS"
        else:
            raise UserError(f"{path}: the tokenizer has neither an EOS nor a SEP token to stand for an empty context; "
                            f"set eos_token in {folder / 'tokenizer_config.json'}")
    return Loaded(
        model, tokenizer, backend, dev, _max_length(model, tokenizer, max_length, path), prefix_id, note, path
    )


def split_head(model: torch.nn.Module, backend: str, probe_ids: torch.Tensor):
    """(backbone, head) such that head(backbone(ids)[0]) == model(ids).logits, or None if no such split holds."""
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        return None
    others = [m for m in model.children() if m is not backbone and any(True for _ in m.parameters())]
    if len(others) != 1:
        return None
    head = others[0]
    mask = torch.ones_like(probe_ids)
    try:
        with torch.inference_mode():
            full = model(input_ids=probe_ids, attention_mask=mask).logits
            split = head(backbone(input_ids=probe_ids, attention_mask=mask)[0])
    except Exception:  # noqa: BLE001 - any failure means: use the full forward
        return None
    if split.shape != full.shape or not torch.allclose(split.float(), full.float(), rtol=1e-4, atol=1e-4):
        return None
    return backbone, head
