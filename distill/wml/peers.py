"""The peers trained together: a wrapper module holding them and their weights ω, and the trainer that
takes the mirror-descent step on ω every `weight_update_frequency` training steps.

The wrapper's forward gives the inner loss Σ_j ω_j ℓ_j (distill.wml.objective) when training
and the ω-weighted ensemble's cross-entropy when evaluating, so the dev loss, early stopping
and the best checkpoint follow the validation ensemble loss. ω is a buffer: checkpoints
carry it (and the count of outer steps) and a resumed run continues with them. The dev batch
of outer step s is a fixed function of s, so a resumed run takes the same outer steps.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from distill.trainer import WrapperTrainer
from distill.wml import objective as W
from distill.wrapper import store_ties_once
from train.chunked import scored_positions


class PeersWrapper(nn.Module):
    accepts_loss_kwargs = True  # the Trainer counts num_items_in_batch over the accumulated batch

    def __init__(
        self, peers: list[nn.Module], objective: str, alpha: float, method: str, teacher: nn.Module | None = None
    ):
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.config = peers[0].config
        self.objective, self.alpha, self.method = objective, alpha, method
        self.teacher = [teacher] if teacher is not None else []  # a list: not a submodule, never trained or saved
        self.register_buffer("omega", torch.full((len(peers),), 1.0 / len(peers)))
        self.register_buffer(
            "outer_steps", torch.zeros((), dtype=torch.long)
        )  # checkpointed with ω: η's schedule resumes
        self.loss_type = "ForCausalLM" if objective == "causal" else None  # labels counted after the shift when causal
        store_ties_once(self)

    def tie_weights(self) -> None:
        for p in self.peers:
            p.tie_weights()

    def forward(self, input_ids, attention_mask=None, labels=None, n_tokens=None, omega=None, ensemble=None):
        """Training: {"loss": ω·ℓ, "parts": ℓ [K], "terms"}. Evaluation (or ensemble=True): the
        ω-weighted ensemble's cross-entropy. `omega` replaces the buffer (for the hypergradient)."""
        rows, targets = scored_positions(labels, self.objective == "causal")
        n = n_tokens if n_tokens is not None else targets.numel()
        logits = [rows(p(input_ids=input_ids, attention_mask=attention_mask).logits) for p in self.peers]
        w = self.omega if omega is None else omega
        if ensemble if ensemble is not None else not self.training:
            return {"loss": W.ensemble_loss(logits, targets, w, n), "logits": None}
        if self.method == "vanilla":
            with torch.no_grad():
                t = self.teacher[0]
                if next(t.parameters()).device != input_ids.device:
                    t.to(input_ids.device)
                teacher_logits = rows(t(input_ids=input_ids, attention_mask=attention_mask).logits)
            parts = W.vanilla_parts(logits, teacher_logits, targets, self.alpha, n)
        else:
            parts = W.wml_parts(logits, targets, self.alpha, n)
        terms = {f"peer{i}": v.detach() for i, v in enumerate(parts)}
        return {"loss": (w.detach() * parts).sum(), "parts": parts, "terms": terms, "logits": None}

    @torch.no_grad()
    def ce_sums(self, input_ids, attention_mask, labels) -> torch.Tensor:
        """[B, K + 1] float64: per example, its scored tokens, then each peer's summed cross-entropy over them
        (summed, not averaged, so that shards and batches add up to the dev CE of the whole set)."""
        causal = self.objective == "causal"
        targets = labels[:, 1:] if causal else labels
        rows = [(targets != -100).sum(1).double()]
        for peer in self.peers:
            logits = peer(input_ids=input_ids, attention_mask=attention_mask).logits
            logits = logits[:, :-1] if causal else logits
            ce = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="none")
            rows.append(ce.view(targets.shape).sum(1).double())
        return torch.stack(rows, dim=1)

    def weight_hypergradient(self, train_batch: dict, dev_batch: dict, gamma: float) -> torch.Tensor:
        """g = dL_val/dω through one inner step of size γ (distill.wml.objective.hypergradient), with
        the inner parts on `train_batch` and the ensemble loss on `dev_batch`.

        Taken with eager attention (see W.hypergradient) and without dropout: g is then a function
        of the weights and the two batches alone, it draws nothing from the RNG that the training
        steps use, and it does not depend on whether an evaluation (which leaves the model in eval
        mode) came just before.
        """
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        params = [p for p in self.parameters() if p.requires_grad]
        keep = ("input_ids", "attention_mask", "labels")
        train_batch = {k: v for k, v in train_batch.items() if k in keep}
        dev_batch = {k: v for k, v in dev_batch.items() if k in keep}

        def inner_parts(ps):
            return functional_call(self, dict(zip(names, ps)), args=(), kwargs={**train_batch, "ensemble": False})[
                "parts"
            ]

        def val_loss(ps, w):
            return functional_call(
                self, dict(zip(names, ps)), args=(), kwargs={**dev_batch, "omega": w, "ensemble": True}
            )["loss"]

        was_training = self.training
        attention = [p.config._attn_implementation for p in self.peers]
        self.eval()
        for p in self.peers:  # the forward-mode pass needs attention with a forward derivative (CPU SDPA has none)
            p.set_attn_implementation("eager")
        try:
            return W.hypergradient(params, inner_parts, val_loss, self.omega, gamma)
        finally:
            self.train(was_training)
            for p, a in zip(self.peers, attention):
                p.set_attn_implementation(a)


class WMLTrainer(WrapperTrainer):
    """The HF Trainer over the peers; every `frequency` steps, before the step, a mirror-descent
    update of ω with the hypergradient on the step's own batch and the next dev batch."""

    def __init__(self, *args, wml=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.wml = wml
        self._last_g = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_tokens, scale = self.token_count(num_items_in_batch)
        outputs = model(**inputs, n_tokens=n_tokens)
        loss = self.finish_loss(outputs, scale, num_items_in_batch, model.training)
        return (loss, outputs) if return_outputs else loss

    def _dev_batch(self, s: int) -> dict:
        """The dev batch of outer step s: rows s·B ... s·B + B − 1 of the dev set, wrapping around."""
        n, b = len(self.eval_dataset), self.args.per_device_eval_batch_size
        rows = [self.eval_dataset[(s * b + i) % n] for i in range(min(b, n))]
        return self._prepare_inputs(self.data_collator(rows))

    def training_step(self, model, inputs, num_items_in_batch=None):
        wrapper = self.accelerator.unwrap_model(model)
        step = self.state.global_step
        if (
            len(wrapper.peers) > 1
            and self.eval_dataset is not None
            and step % self.wml.weight_update_frequency == 0
            and int(wrapper.outer_steps) <= step // self.wml.weight_update_frequency
        ):  # once per step, also under accumulation
            self.update_omega(wrapper, self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def update_omega(self, wrapper: PeersWrapper, train_batch: dict) -> None:
        """ω ← ω exp(−η g) / Z with g the hypergradient through one inner step of size γ (the current learning rate)."""
        gamma = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.args.learning_rate
        g = wrapper.weight_hypergradient(train_batch, self._dev_batch(int(wrapper.outer_steps)), gamma)
        if self.accelerator.num_processes > 1:  # one ω for all ranks
            g = self.accelerator.reduce(g, reduction="mean")
        w = self.wml
        eta = W.eta_at(int(wrapper.outer_steps), w.eta, w.eta_min, w.eta_warmup, w.eta_steps)
        wrapper.omega.copy_(W.mirror_step(wrapper.omega, g, eta))
        wrapper.outer_steps += 1
        self._last_g, self._last_eta = g.tolist(), eta

    @torch.no_grad()
    def peer_dev_ce(self) -> list[float]:
        """Each peer's cross-entropy over the whole dev set. The evaluation loader is sharded across ranks:
        every rank sums its examples, and gather_for_metrics joins all of them (leaving out the examples
        the sampler repeats to even the shards), so every rank gets the dev CE of the full set."""
        wrapper = self.accelerator.unwrap_model(self.model)
        wrapper.eval()
        totals = torch.zeros(len(wrapper.peers) + 1, dtype=torch.float64)
        for batch in self.get_eval_dataloader():
            batch = self._prepare_inputs(batch)
            per_example = wrapper.ce_sums(batch["input_ids"], batch.get("attention_mask"), batch["labels"])
            totals += self.accelerator.gather_for_metrics(per_example).sum(0).cpu()
        return (totals[1:] / totals[0].clamp_min(1)).tolist()

    def extra_logs(self) -> dict:
        wrapper = self.accelerator.unwrap_model(self.model)
        logs = {f"omega/{i}": round(float(v), 6) for i, v in enumerate(wrapper.omega)}
        if self._last_g is not None:
            logs.update(
                {f"hypergrad/{i}": round(v, 6) for i, v in enumerate(self._last_g)}, eta=round(self._last_eta, 6)
            )
        return logs
