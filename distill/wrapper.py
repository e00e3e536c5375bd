"""The training wrapper: the student, the trainable parts of the loss, and the composite loss.

Projections (student width -> teacher width) and auxiliary classifiers are submodules here,
so the optimizer, the checkpoints and DeepSpeed see them and they train (a reference
implementation kept its projections in a plain dict and computed the hidden loss under
no_grad, so neither trained). They are applied inside `forward`, where DeepSpeed gathers
parameters. The exported model is `wrapper.student` alone, a plain Hugging Face model.

The composite is Σ_k weight_k · term_k over the active terms of `distill.losses`, each term
an instance of its registered class (distill.losses.REGISTRY) that owns its trainable parts,
each normalised per valid token of the whole accumulated batch (`n_tokens`). Nothing here
knows a term by name. Logits are never whole: the student runs without its head, and the rowwise
terms (ce and the logit terms) are computed together over chunks of `chunk` positions from its last
hidden state and the teachers' (train.chunked, distill.losses.base.Batch.at).
"""
from __future__ import annotations

from torch import nn

from distill.losses import REGISTRY, Batch, LossTerm, Needs, Setup
from distill.teachers import Teacher, num_layers
from train.chunked import causal_ce, final_states, logit_head, scored_positions



def store_ties_once(module: nn.Module) -> None:
    """The module's state dict leaves out entries that share storage with an earlier one (GPT-2's head and
    embedding), through torch's public state-dict hook, so the Trainer's own checkpoint writer stores every
    tensor once (safetensors refuses shared storage). They are listed as `_keys_to_ignore_on_save`: the Trainer,
    finding exactly those missing on resume, calls the module's tie_weights() instead of warning."""
    from train.rundir import state_groups

    tied = [name for group in state_groups(module) for name in group[1:]]
    module._keys_to_ignore_on_save = tied or None
    if tied:
        def leave_out_ties(_module, state_dict, prefix, _metadata) -> None:
            for name in tied:
                state_dict.pop(prefix + name, None)

        module.register_state_dict_post_hook(leave_out_ties)


class DistillationWrapper(nn.Module):
    """The student and the active terms' trainable parts; forward returns the composite loss and its terms."""

    accepts_loss_kwargs = True  # the Trainer then counts num_items_in_batch over the accumulated batch
    loss_type = "ForCausalLM"   # ... over labels[..., 1:], the positions a causal LM predicts

    def __init__(self, student: nn.Module, teachers: list[Teacher], loss_cfg, chunk: int = 1024):
        super().__init__()
        self.student = student
        self.chunk = chunk  # positions whose logits exist at once (train.logits_chunk)
        self.has_head = logit_head(student) is not None  # False: the student's logits are computed whole
        self.config = student.config
        setup = Setup(hidden_size=student.config.hidden_size, num_layers=num_layers(student.config),
                      vocab_size=student.config.vocab_size, teachers=teachers, student=student)
        self.owned: dict[str, list[nn.Module]] = {}  # each term's trainable parts (also registered under its group)
        self.terms: list[LossTerm] = [REGISTRY[key](params, setup) for key, params in loss_cfg.active().items()]
        for term in self.terms:  # each term's parts under its group: checkpoints name them <group>.<name>
            group = self._modules.get(term.group)
            if group is None and not hasattr(self, term.group):
                group = nn.ModuleDict()
                self.add_module(term.group, group)
            if not isinstance(group, nn.ModuleDict):
                raise ValueError(f"loss term {term.key}: its group {term.group!r} is a name the wrapper already uses")
            owned = term.parts()
            for name, module in owned.items():
                if name in group:
                    raise ValueError(f"loss terms {term.key} and another both name a part {term.group}.{name}")
                group[name] = module
            self.owned[term.key] = list(owned.values())
        self.teacher_weights = tuple(t.weight for t in teachers)
        self.needs = Needs.union(t.needs for t in self.terms)
        layers = [t.qkv_layers() for t in self.terms]
        self.student_qkv = sorted({b for s, _ in layers for b in s})  # blocks whose queries, keys and values are read
        self.teacher_qkv = [
            sorted({b for _, per in layers for b in (per[k] if per else [])}) for k in range(len(teachers))
        ]
        store_ties_once(self)

    @property
    def head(self) -> nn.Module | None:
        """The student's output layer when its loss is taken over chunks (a property, so the wrapper does not
        register the layer a second time)."""
        return self.student.get_output_embeddings() if self.has_head else None

    def term(self, key: str) -> LossTerm:
        return next(t for t in self.terms if t.key == key)

    @property
    def every_parameter_used(self) -> bool:
        """Whether every trainable parameter gets a gradient at every step, so that DDP need not search for unused
        ones (find_unused_parameters=False): a rowwise term reads the student's logits, which every parameter of the
        student reaches, and each term's parts stay in the loss's graph at every step (as 0 when a batch gives them
        nothing). Without one (hidden_mse alone) the blocks above the deepest one read get none."""
        return any(t.rowwise for t in self.terms)

    def tie_weights(self) -> None:
        self.student.tie_weights()

    def formula(self, teachers: list[Teacher]) -> str:
        return " + ".join(t.describe(teachers) for t in self.terms)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        labels=None,
        teacher_outputs=None,
        cached_targets=None,
        n_tokens=None,
        teacher_qkv=None,
    ):
        """Without `teacher_outputs`/`cached_targets` (evaluation): {"loss"}, the student's cross-entropy per
        valid token. With them: {"loss", "terms"}, the composite loss and its terms. Without labels: {"logits"}.
        `teacher_qkv`: per teacher, the captured queries, keys and values (distill.attention.capture_qkv)."""
        from distill.align import student_rows
        from distill.attention import capture_qkv

        training = teacher_outputs is not None or cached_targets is not None
        with capture_qkv(self.student, self.student_qkv if training else []) as student_qkv:
            out, final = final_states(self.student, self.student, self.head, input_ids=input_ids,
                                      attention_mask=attention_mask,
                                      output_hidden_states=training and self.needs.student_hidden)
        if labels is None:
            return {"logits": final if self.head is None else self.head(final)}
        if not training:
            return {"loss": causal_ce(final, self.head, labels, n_tokens, self.chunk)}
        rows, targets = scored_positions(labels)
        online = teacher_outputs is not None
        read = [
            student_rows(o, rows, self.needs.teacher_logits, self.needs.teacher_hidden) for o in teacher_outputs or []
        ]
        batch = Batch(
            logits=None,
            targets=targets,
            n_tokens=n_tokens if n_tokens is not None else max(targets.numel(), 1),
            rows=rows,
            teacher_weights=self.teacher_weights,
            student_hidden=out.hidden_states if self.needs.student_hidden else None,
            teacher_final=[r[0] for r in read] if online and self.needs.teacher_logits else None,
            teacher_heads=[o.head for o in teacher_outputs] if online and self.needs.teacher_logits else None,
            teacher_hidden=[r[1] for r in read] if online and self.needs.teacher_hidden else None,
            teacher_aligned=[r[2] for r in read] if online else None,
            cached=tuple(rows(x) for x in cached_targets) if cached_targets is not None else None,
            attention_mask=attention_mask,
            student_qkv=student_qkv if self.needs.qkv else None,
            teacher_qkv=teacher_qkv,
            chunk=self.chunk,
        )
        terms = {}
        rowwise = [t for t in self.terms if t.rowwise]

        def rowwise_terms(logits, chunk: Batch):
            total = 0.0
            for t in rowwise:
                value = t(chunk, getattr(self, t.group, None))
                terms[t.key] = terms.get(t.key, 0.0) + value.detach()
                total = total + t.weight * value
            return total

        parts = tuple(p for t in rowwise for m in self.owned[t.key] for p in m.parameters())
        loss = batch.over_chunks(rows(final), self.head, rowwise_terms, parts) if rowwise else 0.0
        for t in self.terms:
            if not t.rowwise:
                terms[t.key] = t(batch, getattr(self, t.group, None))
                loss = loss + t.weight * terms[t.key]
        terms = {t.key: terms[t.key] for t in self.terms}  # the formula's order
        return {"loss": loss, "terms": {k: v.detach() for k, v in terms.items()}}
