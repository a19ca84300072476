"""fastctc.score.scorer: turns a window of manifest items into output rows.

`Scorer.score(items, loader)` loads every item's emissions, turns each bad item into a row
with `error`, sorts the good ones by frame count (padded batches then waste little work),
scores them in batches with fastctc's loss engine (reduction="none") and, on request,
aligns them (`align`) and decodes them greedily with error rates (`decode="greedy"`).
Rows come back in the items' order.

The per-item Python work is what bounds throughput (the engine needs ~3 us an item on
the short OCR lines of the benchmark), so the common steps run once per window or batch:
texts of a one-character vocab are encoded with one NumPy lookup (vocab.Tokenizer), the
NaN/+inf check is one reduction per batch, and emissions are read in file order.
"""
from __future__ import annotations

import numpy as np

from .._validate import first_offender
from .errors import ItemError
from .metrics import best_paths, text_rates, token_rate
from .rows import Rows
from .vocab import Tokenizer


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _clean(message):
    return " ".join(str(message).split())


class Scorer:
    """Everything scoring needs, picklable (sent to Dask workers)."""

    def __init__(self, symbols, blank=0, from_logits=False, batch_size=32, threads=None,
                 device="cpu", align=False, decode=None, compare_raw=False):
        self.symbols = list(symbols)
        self.blank = blank
        self.from_logits = from_logits
        self.batch_size = max(1, batch_size)
        self.threads = threads
        self.device = device
        self.align = align
        self.decode = decode
        self.compare_raw = compare_raw
        self._tokenizer = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        return state

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.symbols, self.blank)
        return self._tokenizer

    # ------------------------------------------------------------------ checks
    def _tokens(self, toks):
        if isinstance(toks, np.ndarray):
            toks = toks.tolist()
        if not isinstance(toks, (list, tuple)):
            raise ItemError(f"`tokens` must be a list of class ids, got {type(toks).__name__}")
        C = len(self.symbols)
        for k, t in enumerate(toks):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ItemError(f"tokens[{k}] = {t!r} is not an integer")
            if not 0 <= t < C:
                raise ItemError(f"tokens[{k}] = {t} is out of range [0, {C})")
            if t == self.blank:
                raise ItemError(f"tokens[{k}] = {t} is the blank")
        return [int(t) for t in toks]

    def _check_array(self, arr):
        if arr.ndim != 2:
            raise ItemError(f"emissions must be 2-D (T, C), got shape {tuple(arr.shape)}")
        dt = arr.dtype
        if dt.kind != "f":
            raise ItemError(f"emissions dtype {dt} is not floating point")
        if dt != np.float32 and dt != np.float64:
            arr = arr.astype(np.float64 if dt.itemsize == 8 else np.float32)  # float16, big-endian
        T, C = arr.shape
        if C != len(self.symbols):
            raise ItemError(f"emissions have C = {C} classes, the vocab has {len(self.symbols)} symbols")
        if T == 0:
            raise ItemError("emissions have no frames (T = 0)")
        return arr

    @staticmethod
    def _first_bad(arr):
        """ItemError naming the first NaN / +inf cell, or None."""
        if arr.max() < np.inf:
            return None
        t, c = first_offender(np.isnan(arr) | (arr == np.inf))
        return ItemError(f"emissions contain {arr[t, c]} at frame {t}, class {c}")

    # ------------------------------------------------------------------ engine
    def _losses(self, batch, flat, in_lens, tgt_lens):
        """Per-sequence NLL of one padded (T, N, C) batch on the chosen device."""
        if self.device == "cuda":
            import torch

            import fastctc.torch as ftorch
            lp = torch.from_numpy(batch).cuda()
            if self.from_logits:
                lp = torch.log_softmax(lp, dim=-1)
            out = ftorch.ctc_loss(lp, torch.from_numpy(flat).cuda(), torch.from_numpy(in_lens),
                                  torch.from_numpy(tgt_lens), blank=self.blank, reduction="none")
            return out.detach().cpu().numpy()
        from .. import _engine  # looked up per call: the benchmark times this function
        return _engine.ctc_loss(batch, flat, in_lens, tgt_lens, blank=self.blank, reduction="none",
                                from_logits=self.from_logits, num_threads=self.threads)

    def _spans(self, arr, tok):
        from .._align import forced_align, merge_tokens
        lp = _log_softmax(arr.astype(np.float64)).astype(arr.dtype) if self.from_logits else arr
        T = arr.shape[0]
        targets = np.asarray([tok], dtype=np.int64).reshape(1, len(tok))
        paths, scores = forced_align(lp[None], targets, np.array([T]), np.array([len(tok)]),
                                     blank=self.blank)
        spans = merge_tokens(np.asarray(paths)[0], np.asarray(scores)[0], blank=self.blank)
        return [{"token": int(s.token), "symbol": self.symbols[int(s.token)], "start": int(s.start),
                 "end": int(s.end), "score": float(s.score)} for s in spans]

    def _greedy(self, w, i, item, labels, ref):
        """hypothesis / cer / wer of item i from its collapsed best path `labels`."""
        if item["tokens"] is not None:
            w.hypothesis[i] = " ".join(map(str, labels))
            w.cer[i] = token_rate(ref, labels)
        else:
            sym = self.symbols
            hyp = "".join([sym[k] for k in labels])
            w.hypothesis[i] = hyp
            w.cer[i], w.wer[i] = text_rates(item["text"], hyp, self.compare_raw)

    # ------------------------------------------------------------------ a window
    def score(self, items, loader, on_rows=None, loaded=None) -> Rows:
        """Rows (in `items` order) for a window of items.  on_rows(n) after every n rows.
        `loaded`: the items' emissions (or ItemErrors) already read by a reader thread,
        None for items with a manifest error."""
        n = len(items)
        w = Rows([it["id"] for it in items], np.full(n, np.nan), np.full(n, -1, dtype=np.int64),
                 np.full(n, -1, dtype=np.int64), [None] * n,
                 [None] * n if self.decode else None, np.full(n, np.nan) if self.decode else None,
                 np.full(n, np.nan) if self.decode else None, [None] * n if self.align else None)
        error = w.error
        # token ids of every item, concatenated: text items first (one vectorised lookup)
        text_idx, texts, tok_idx, tok_lists = [], [], [], []
        for i, item in enumerate(items):
            err = item.get("error")
            if err:
                error[i] = _clean(err)
            elif item["tokens"] is not None:
                try:
                    tok_lists.append(self._tokens(item["tokens"]))
                    tok_idx.append(i)
                except ItemError as e:
                    error[i] = _clean(e)
            else:
                text_idx.append(i)
                texts.append(item["text"])
        starts = np.zeros(n, dtype=np.int64)
        lens = np.zeros(n, dtype=np.int64)
        parts = []
        if texts:
            ids, offsets, bad = self.tokenizer.encode_many(texts)
            for j, e in bad.items():
                error[text_idx[j]] = _clean(e)
            ti = np.asarray(text_idx, dtype=np.int64)
            starts[ti] = offsets[:-1]
            lens[ti] = np.diff(offsets)
            parts.append(ids)
        if tok_idx:
            base = sum(len(p) for p in parts)
            tl = np.fromiter(map(len, tok_lists), dtype=np.int64, count=len(tok_lists))
            ki = np.asarray(tok_idx, dtype=np.int64)
            lens[ki] = tl
            starts[ki] = base + np.cumsum(tl) - tl
            parts.append(np.fromiter((t for lst in tok_lists for t in lst), dtype=np.int64, count=int(tl.sum())))
        allids = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.int64))
        # emissions
        todo = [i for i in range(n) if error[i] is None]
        if loaded is None:
            loaded = loader.load_many([items[i]["emissions"] for i in todo])
        else:
            loaded = [loaded[i] for i in todo]
        C = len(self.symbols)
        arrs = [None] * n
        for i, a in zip(todo, loaded):
            if isinstance(a, Exception):
                error[i] = _clean(a)
                continue
            if not (a.ndim == 2 and a.shape[1] == C and a.shape[0] and a.dtype in _NATIVE):
                try:
                    a = self._check_array(a)
                except ItemError as e:
                    error[i] = _clean(e)
                    continue
            arrs[i] = a
        good = np.asarray([i for i in todo if arrs[i] is not None], dtype=np.int64)
        T = np.zeros(n, dtype=np.int64)
        if len(good):
            T[good] = np.fromiter((arrs[i].shape[0] for i in good.tolist()), dtype=np.int64, count=len(good))
        # feasibility: one frame per token plus a blank between equal neighbours
        eq = np.zeros(len(allids) + 1, dtype=np.int64)
        if len(allids) > 1:
            np.cumsum(allids[1:] == allids[:-1], out=eq[2:])
        last = np.maximum(starts + lens - 1, starts)
        need = lens + np.where(lens > 1, eq[last] - eq[starts], 0)
        infeasible = good[need[good] > T[good]]
        for i in infeasible.tolist():
            error[i] = (f"infeasible: the transcript needs at least {int(need[i])} frames "
                        f"({int(lens[i])} tokens), the emissions have {int(T[i])}")
            w.frames[i], w.tokens[i] = T[i], lens[i]
            if self.decode:
                a = arrs[i]
                labels = best_paths(a[:, None, :], [a.shape[0]], self.blank)[0]
                self._greedy(w, i, items[i], labels, allids[starts[i]:starts[i] + lens[i]].tolist())
        good = good[need[good] <= T[good]]
        if on_rows and len(good) < n:
            on_rows(n - len(good))
        # length bucketing: sorted by (dtype, T), similar lengths share a padded batch
        size = np.fromiter((arrs[i].dtype.itemsize for i in good.tolist()), dtype=np.int64, count=len(good))
        order = np.lexsort((T[good], size))
        good, size = good[order], size[order]
        bs = self.batch_size
        k = 0
        while k < len(good):
            end = min(k + bs, len(good))
            if size[end - 1] != size[k]:          # a batch holds one dtype
                end = k + int(np.searchsorted(size[k:end], size[k], side="right"))
            self._score_batch(good[k:end], items, arrs, T, starts, lens, allids, w)
            if on_rows:
                on_rows(end - k)
            k = end
        return w

    def _score_batch(self, group, items, arrs, T, starts, lens, allids, w):
        C = len(self.symbols)
        gl = group.tolist()
        Tg = T[group]
        # filled batch-major (one contiguous copy per item), handed over as the (T, N, C)
        # view the engine reads through its strides: no copy there
        buf = np.zeros((len(gl), int(Tg.max()), C), dtype=arrs[gl[0]].dtype)
        for n, i in enumerate(gl):
            buf[n, :arrs[i].shape[0]] = arrs[i]
        batch = buf.transpose(1, 0, 2)
        if not batch.max() < np.inf:         # NaN or +inf somewhere: find whose, drop them
            keep = []
            for i in gl:
                e = self._first_bad(arrs[i])
                if e is None:
                    keep.append(i)
                else:
                    w.error[i] = _clean(e)
                    w.frames[i], w.tokens[i] = T[i], lens[i]
            if keep:
                self._score_batch(np.asarray(keep, dtype=np.int64), items, arrs, T, starts, lens, allids, w)
            return
        L = lens[group]
        total = int(L.sum())
        idx = np.arange(total, dtype=np.int64) + np.repeat(starts[group] - (np.cumsum(L) - L), L)
        flat = allids[idx]
        nll = np.asarray(self._losses(batch, flat, Tg, L), dtype=np.float64)
        finite = np.isfinite(nll)
        w.nll[group[finite]] = nll[finite]
        w.frames[group] = Tg
        w.tokens[group] = L
        for n in np.flatnonzero(~finite).tolist():
            v = float(nll[n])
            w.error[gl[n]] = ("infeasible: no alignment of the transcript has non-zero probability "
                              "under these emissions" if v > 0 else f"loss is {v}")
        if self.align:
            for n, i in enumerate(gl):
                if finite[n]:
                    w.spans[i] = self._spans(arrs[i], allids[starts[i]:starts[i] + lens[i]].tolist())
        if self.decode:
            labels = best_paths(batch, Tg.tolist(), self.blank)
            for n, i in enumerate(gl):
                self._greedy(w, i, items[i], labels[n], allids[starts[i]:starts[i] + lens[i]].tolist())
