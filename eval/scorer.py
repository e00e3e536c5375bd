"""Batched log-likelihood scoring of token requests: one forward pass per batch, results in input order.

Both scorers deduplicate identical requests, sort them by length so that batches carry
little padding, run the model under `torch.inference_mode()`, and normalise only the
positions they need: the hidden states of those positions go through the output head and
a float32 log-sum-exp, so no [batch, time, vocab] log-prob tensor is ever built. Per-token
log-probabilities are summed in float64 in the request's own token order, so a score does
not depend on the batch size or on which requests share a batch (up to float32 matmul
rounding, well under 1e-5 on CPU).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from common.errors import stop_if_swallowed
from eval.encode import CausalRequest, MaskedRequest
from eval.model import Loaded, split_head

CHUNK_LOGITS = 1 << 20  # logits normalised at a time: 4 MB of float32, stays in cache
TREE_NODES = 384  # positions a tree of several items may reach (attention within a tree is quadratic in it)
BATCH_TOKENS = 16  # positions per forward pass per unit of --batch-size when items are read as trees (48 ran
# 17% slower at the llama-58m shape on 2 CPU cores, its activations and tree attention scores too large for the cache)
HEAD_ROWS = 256  # rows the head takes at a time at least, once its product costs more than the normalisation
WIDE_HIDDEN = 256  # ... which it does from this hidden width on


def _unique(keys: list[tuple]) -> tuple[list[int], np.ndarray]:
    """Indices of the first occurrence of each distinct key, and for every key the index of its representative."""
    first: dict[tuple, int] = {}
    reps, back = [], np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        j = first.get(key)
        if j is None:
            j = first[key] = len(reps)
            reps.append(i)
        back[i] = j
    return reps, back


def head_chunk_rows(vocab: int, hidden: int | None) -> int:
    """Rows normalised at a time: about CHUNK_LOGITS logits, or at least HEAD_ROWS when a head of width `hidden`
    (None: the model gives logits, no head to multiply) is WIDE_HIDDEN wide or more."""
    rows = max(1, CHUNK_LOGITS // max(vocab, 1))
    return max(rows, HEAD_ROWS) if hidden is not None and hidden >= WIDE_HIDDEN else rows


def tree_attention_works(model, split) -> bool:
    """Whether the model takes a 4D boolean attention mask with position ids and gives the same logits for a branch
    of a tree as for the branch alone (GPT-2, Llama and most HF decoders do; a model that does not is scored
    one sequence per request)."""
    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]], device=dev) % vocab
    parent, depth = [-1, 0, 1, 2, 3, 2], [0, 1, 2, 3, 4, 3]
    allow = torch.zeros((6, 6), dtype=torch.bool, device=dev)
    for j, p in enumerate(parent):
        if p >= 0:
            allow[j] = allow[p]
        allow[j, j] = True
    try:
        with torch.inference_mode():
            tree = model(
                input_ids=ids, attention_mask=allow[None, None], position_ids=torch.tensor([depth], device=dev)
            ).logits[0]
            a = model(input_ids=ids[:, :5]).logits[0]
            b = model(input_ids=ids[:, [0, 1, 2, 5]]).logits[0]
    except Exception:  # noqa: BLE001 - any failure means: no tree attention for this model
        return False
    close = lambda x, y: torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-4)  # noqa: E731
    return close(tree[:5], a) and close(tree[5], b[3])


def takes(module: torch.nn.Module, name: str) -> bool:
    """Whether `module`'s forward takes the keyword `name` (a model's own code may take only input_ids and
    attention_mask, as GPT-BERT's does)."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class Scorer:
    def __init__(self, loaded: Loaded, progress: bool = True):
        self.m = loaded
        self.progress = progress
        self.pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        probe = torch.tensor([[self.m.prefix_id or 0, 5, 6, 7]], device=loaded.device) % loaded.model.config.vocab_size
        self.split = split_head(loaded.model, loaded.backend, probe)
        self.cache_off = loaded.backend == "causal" and takes(self.split[0] if self.split else loaded.model,
                                                               "use_cache")
        self.trees: bool | None = None  # tree attention checked on first use
        self.work = {"positions": 0, "head_rows": 0}  # tokens the model has read (padding excluded), rows normalised

    def _logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                  cols: torch.Tensor, picks: torch.Tensor, targets: torch.Tensor, position_ids=None) -> np.ndarray:
        """log p(targets[e]) at position (rows[picks[e]], cols[picks[e]]) as float64; `picks` is sorted.

        Only the positions in (rows, cols) are normalised, and several targets may share one
        position. The head and the log-softmax run over chunks of about 1M logits, so the
        vocabulary-sized intermediate stays in cache instead of being allocated per batch. One
        fused log_softmax over a cached chunk is about 4x faster on CPU than torch.logsumexp
        (which makes several passes over memory); only the target columns of it are kept. From
        a hidden width of WIDE_HIDDEN on, the head's product is the cost, and a chunk holds at
        least HEAD_ROWS rows (a 16k head at 512 wide: 65-row products ran at 2/3 the speed).
        """
        self.work["head_rows"] += len(rows)
        extra = {} if position_ids is None else {"position_ids": position_ids}
        if self.cache_off:
            extra["use_cache"] = False  # no key/value cache is built for a pass that is never continued
        if self.split is not None:
            backbone, head = self.split
            picked = backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)[0][rows, cols]
        else:
            head = None
            picked = self.m.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[rows, cols]
        step = head_chunk_rows(self.m.model.config.vocab_size, picked.shape[-1] if head is not None else None)
        bounds = torch.searchsorted(picks, torch.arange(0, len(rows) + step, step, device=picks.device)).tolist()
        out = []
        for c, i in enumerate(range(0, len(rows), step)):
            lo, hi = bounds[c], bounds[c + 1]
            if lo == hi:
                continue
            logits = (head(picked[i:i + step]) if head is not None else picked[i:i + step]).float()
            out.append(torch.log_softmax(logits, dim=-1)[picks[lo:hi] - i, targets[lo:hi]].double())
        return torch.cat(out).cpu().numpy()

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="seq", disable=not self.progress, leave=False)

    def _advance(self, bar, n: int) -> None:
        """A batch is scored: the bar moves, and a Ctrl-C a finalizer swallowed meanwhile stops the scoring."""
        bar.update(n)
        stop_if_swallowed()

    # ------------------------------------------------------------------ causal
    def causal(self, requests: list[CausalRequest], batch_size: int) -> np.ndarray:
        """Sum of log p(cont | ctx) per request, in input order (float64).

        Requests that share a token prefix (the two sentences of a minimal pair, EWoK's two
        targets after one context, sentences that open alike) share the next-token distribution
        after it. The windows are walked through a trie of prefixes in batch order: each scored
        token is an edge (prefix, token), and each distinct edge is computed once, by the first
        request that reaches its prefix. On blimp_filtered this normalises 0.6M positions
        instead of 1.1M. Every request still gets its own forward pass.
        """
        L = self.m.max_length
        reps, back = _unique([(tuple(r.ctx), tuple(r.cont)) for r in requests])
        # Left-truncated window of context + continuation, as lm-evaluation-harness does; the
        # model reads all of it but the last token.
        seqs = [(requests[i].ctx + requests[i].cont)[-(L + 1):] for i in reps]
        n_cont = [len(requests[i].cont) for i in reps]
        order = sorted(range(len(reps)), key=lambda k: -len(seqs[k]))
        offsets = np.zeros(len(reps) + 1, dtype=np.int64)
        np.cumsum(n_cont, out=offsets[1:])

        child: dict[tuple[int, int], int] = {}      # (prefix node, token) -> longer prefix node
        home: dict[int, tuple[int, int]] = {}       # prefix node -> (request, column) whose logits compute it
        edge_slot: dict[tuple[int, int], int] = {}  # scored (prefix node, token) -> slot in edge_lp
        owned: list[list[tuple[int, int, int]]] = [[] for _ in reps]  # per request: (column, token, slot)
        token_slot = np.empty(offsets[-1], dtype=np.int64)
        for k in order:
            s, first, node = seqs[k], len(seqs[k]) - n_cont[k], 0
            for t, tok in enumerate(s):
                key = (node, tok)
                if t >= first:  # the logits at column t - 1 predict token t
                    slot = edge_slot.get(key)
                    if slot is None:
                        slot = edge_slot[key] = len(edge_slot)
                        at, col = home.setdefault(node, (k, t - 1))
                        owned[at].append((col, tok, slot))
                    token_slot[offsets[k] + t - first] = slot
                node = child.setdefault(key, len(child) + 1)

        edge_lp = np.empty(len(edge_slot), dtype=np.float64)
        dev = self.m.device
        with torch.inference_mode(), self._bar(len(reps), "scoring") as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                width = len(seqs[batch[0]]) - 1
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                position: dict[tuple[int, int], int] = {}  # (row, column) -> index among the normalised positions
                picks, tgts, slots = [], [], []
                for b, k in enumerate(batch):
                    ids[b, :len(seqs[k]) - 1] = torch.tensor(seqs[k][:-1])
                    for col, tok, slot in sorted(owned[k]):
                        picks.append(position.setdefault((b, col), len(position)))
                        tgts.append(tok)
                        slots.append(slot)
                self._advance(bar, len(batch))
                if not position:
                    continue
                rows, cols = zip(*position)
                # Right padding never reaches a real token through causal attention; the mask only tells the model so.
                att = (torch.arange(width)[None, :] < torch.tensor([len(seqs[k]) - 1 for k in batch])[:, None]).long()
                self.work["positions"] += int(att.sum())
                edge_lp[slots] = self._logprobs(ids.to(dev), att.to(dev), torch.tensor(rows, device=dev),
                                                torch.tensor(cols, device=dev), torch.tensor(picks, device=dev),
                                                torch.tensor(tgts, device=dev))
        token_lp = edge_lp[token_slot]  # summed in each request's own token order
        sums = np.add.reduceat(token_lp, offsets[:-1]) if len(token_lp) else np.zeros(len(reps))
        sums[np.asarray(n_cont) == 0] = (
            0.0  # nothing scored (2025, a one-token sentence): reduceat would copy a neighbour
        )
        return sums[back]

    # ------------------------------------------------------------------ causal, one tree per item
    def causal_items(self, requests: list[CausalRequest], choices: list[int], batch_size: int) -> np.ndarray:
        """As `causal`, but the requests of one item (`choices[i]` consecutive requests) are read in one forward pass
        as a tree: their common token prefix once (an entity-tracking prefix of a hundred tokens, the words a minimal
        pair shares, an EWoK context), then each branch, every position attending to its ancestors only (a 4D
        attention mask) at the position ids of its depth. Nothing is padded inside a tree; trees of similar size
        share a batch. The same log-probabilities as one sequence per request (checked once per model, else
        `causal` is used)."""
        if self.trees is None:
            self.trees = tree_attention_works(self.m.model, self.split)
        if not self.trees:
            return self.causal(requests, batch_size)
        L = self.m.max_length
        items, start = [], 0
        for n in choices:
            items.append(list(range(start, start + n)))
            start += n
        groups = self._tree_groups(
            requests,
            items,
            L,
            cap=max(TREE_NODES, *(sum(len(requests[r].ctx) + len(requests[r].cont) for r in item) for item in items)),
        )
        offsets = np.zeros(len(requests) + 1, dtype=np.int64)
        np.cumsum([len(r.cont) for r in requests], out=offsets[1:])
        token_edge = np.zeros(offsets[-1], dtype=np.int64)
        # A global trie of token prefixes across all items: an edge (prefix, next token) met in several trees (the
        # instruction every WUG item opens with) is normalised once, in the first tree that has it.
        global_child: dict[tuple[int, int], int] = {}
        edge_of: dict[tuple[int, int], int] = {}
        trees = []
        for group in groups:  # nodes: (token, parent, depth); a request's window is a path from a root
            nodes: list[tuple[int, int, int]] = []
            child: dict[tuple[int, int], int] = {}
            gnode_of: list[int] = []  # the global prefix node of each local node
            owned: list[tuple[int, int, int]] = []  # (local node, next token, edge) this tree computes
            for r in group:
                seq = (requests[r].ctx + requests[r].cont)[-(L + 1):]
                first = len(seq) - len(requests[r].cont)
                node, gnode = -1, 0
                for t, tok in enumerate(seq):
                    if t >= first and node >= 0:
                        edge = edge_of.get((gnode, tok))
                        if edge is None:
                            edge = edge_of[(gnode, tok)] = len(edge_of)
                            owned.append((node, tok, edge))
                        token_edge[offsets[r] + t - first] = edge
                    if t == len(seq) - 1:
                        break
                    key = (node, tok)
                    if key not in child:
                        child[key] = len(nodes)
                        nodes.append((tok, node, nodes[node][2] + 1 if node >= 0 else 0))
                        gnode_of.append(global_child.setdefault((gnode, tok), len(global_child) + 1))
                    node = child[key]
                    gnode = gnode_of[node]
            trees.append((nodes, owned))
        edge_lp = np.zeros(len(edge_of), dtype=np.float64)
        order = sorted(
            (g for g in range(len(trees)) if trees[g][1]), key=lambda g: -len(trees[g][0])
        )  # trees that own an edge
        budget = batch_size * BATCH_TOKENS  # positions per forward pass, padding included
        batches, at = [], 0
        while at < len(order):
            width = max(1, len(trees[order[at]][0]))
            rows = max(1, budget // width)
            batches.append(order[at:at + rows])
            at += rows
        dev = self.m.device
        with torch.inference_mode(), self._bar(len(order), "scoring (trees of shared prefixes)") as bar:
            for chunk in batches:
                batch = [trees[g] for g in chunk]
                width = max(1, max(len(nodes) for nodes, _ in batch))
                ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
                pos = np.zeros((len(batch), width), dtype=np.int64)
                allow = np.zeros((len(batch), width, width), dtype=bool)
                allow[:, np.arange(width), np.arange(width)] = True  # padding sees itself: no empty softmax row
                rows, cols, picks, tgts, edges = [], [], [], [], []
                for b, (nodes, owned) in enumerate(batch):
                    if nodes:
                        tok, parent, depth = zip(*nodes)
                        ids[b, :len(nodes)], pos[b, :len(nodes)] = tok, depth
                    seen = allow[b]
                    for j, (_, parent, _) in enumerate(nodes):
                        if parent >= 0:
                            seen[j] = seen[parent]
                            seen[j, j] = True
                    for node, tok, edge in sorted(
                        owned
                    ):  # a branching position predicts both branches' tokens: one head row
                        if not cols or rows[-1] != b or cols[-1] != node:
                            rows.append(b)
                            cols.append(node)
                        picks.append(len(cols) - 1)
                        tgts.append(tok)
                        edges.append(edge)
                self._advance(bar, len(batch))
                if not rows:
                    continue
                self.work["positions"] += sum(len(nodes) for nodes, _ in batch)
                lp = self._logprobs(
                    torch.from_numpy(ids).to(dev),
                    torch.from_numpy(allow[:, None]).to(dev),
                    torch.tensor(rows, device=dev),
                    torch.tensor(cols, device=dev),
                    torch.tensor(picks, device=dev),
                    torch.tensor(tgts, device=dev),
                    torch.from_numpy(pos).to(dev),
                )
                edge_lp[edges] = lp
        token_lp = edge_lp[token_edge]  # summed in each request's own token order
        sums = np.add.reduceat(token_lp, offsets[:-1]) if len(token_lp) else np.zeros(len(requests))
        sums[offsets[1:] == offsets[:-1]] = 0.0
        return sums

    @staticmethod
    def _tree_groups(requests: list[CausalRequest], items: list[list[int]], L: int, cap: int) -> list[list[int]]:
        """Items in the order of their token sequences, packed into trees of about `cap` positions: items that open
        alike (entity-tracking items of one scene, every WUG item's instruction) share their prefix's positions."""
        def window(r: int) -> list[int]:
            return (requests[r].ctx + requests[r].cont)[-(L + 1):-1]

        def common(a: list[int], b: list[int]) -> int:
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            return n

        order = sorted(range(len(items)), key=lambda i: window(items[i][0]))
        groups: list[list[int]] = []
        nodes, previous = 0, []
        for i in order:
            first = window(items[i][0])
            own = len(first) + sum(len(w) - common(w, first) for w in map(window, items[i][1:]))  # the item's own tree
            new = own - common(first, previous)
            if not groups or nodes + new > cap:
                groups.append([])
                nodes, new = 0, own
            groups[-1].extend(items[i])
            nodes += new
            previous = first
        return groups

    # ------------------------------------------------------------------ masked
    def masked(self, requests: list[MaskedRequest], batch_size: int) -> np.ndarray:
        """Pseudo-log-likelihood per request: one masked copy per target position, copies batched across requests."""
        mask_id = self.m.tokenizer.mask_token_id
        reps, back = _unique([(tuple(r.ids), tuple(r.targets), r.shift, tuple(r.target_ids or ())) for r in requests])
        order = sorted(range(len(reps)), key=lambda k: -len(requests[reps[k]].ids))
        counts = np.array([len(requests[i].targets) for i in reps], dtype=np.int64)
        offsets = np.zeros(len(reps) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # (request, masked position, slot of its log-prob in token_lp)
        copies = [(k, p, offsets[k] + j) for k in order for j, p in enumerate(requests[reps[k]].targets)]
        # the token each copy is scored as, and where its logits are read (mntp: one position before the mask)
        wanted = {
            (k, p): (requests[reps[k]].target_ids[j] if requests[reps[k]].target_ids else requests[reps[k]].ids[p])
            for k in order
            for j, p in enumerate(requests[reps[k]].targets)
        }
        token_lp = np.empty(offsets[-1], dtype=np.float64)
        dev = self.m.device
        with torch.inference_mode(), self._bar(len(copies), "scoring (one copy per masked token)") as bar:
            for start in range(0, len(copies), batch_size):
                batch = copies[start:start + batch_size]
                width = max(len(requests[reps[k]].ids) for k, _, _ in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                att = torch.zeros((len(batch), width), dtype=torch.long)
                tgts, reads = [], []
                for b, (k, p, _) in enumerate(batch):
                    seq = requests[reps[k]].ids
                    ids[b, :len(seq)] = torch.tensor(seq)
                    att[b, :len(seq)] = 1
                    tgts.append(wanted[(k, p)])
                    reads.append((p - requests[reps[k]].shift) % len(seq))
                self.work["positions"] += int(att.sum())
                pos = torch.tensor([p for _, p, _ in batch])
                ids[torch.arange(len(batch)), pos] = mask_id
                every = torch.arange(len(batch), device=dev)
                lp = self._logprobs(ids.to(dev), att.to(dev), every, torch.tensor(reads, device=dev), every,
                                    torch.tensor(tgts, device=dev))
                token_lp[[slot for _, _, slot in batch]] = lp
                self._advance(bar, len(batch))
        sums = np.array([token_lp[offsets[k]:offsets[k + 1]].sum() for k in range(len(reps))])
        return sums[back]
