"""Features-only candidate scorer variants against gbdt_ranker on NYC (issue 12 follow-up), selected on validation.

    python experiments/scorer_sweep.py tables                      # candidate tables of the study's NYC split
    python experiments/scorer_sweep.py at_time gbdt '{"width":256,"lr":0.001,"encoding":"ple"}' ...

Each variant is a JSON dict of `run`'s settings; one JSON line per variant (validation Hit@1 by epoch, the best, and
test Hit@1 of the epoch validation chose) goes to stdout. The `Scorer` here is the prototype the piecewise-linear
encoding was tried with; `CandidateScorer` now carries the same encoding (it keeps tied quantile edges as zero-width
bins where this one packs them, which encodes the same information). Results: experiments/results/scorer_sweep.jsonl.
"""
import copy
import json
import pickle
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from nextlocllm_hf.baselines.feature_rankers import hit_at_1, GBDTRanker
from nextlocllm_hf.modeling.candidates_nextlocllm import candidate_listwise_loss
from pathlib import Path
HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "runs" / "sweep"
torch.set_num_threads(2)
mode = sys.argv[1]
variants = sys.argv[2:]
if mode == "tables":
    sys.path.insert(0, str(HERE))
    from study import Study
    study = Study(data_dir=HERE.parent.parent / "shared" / "data", work_dir=HERE.parent / "runs" / "study")
    nyc = study.city("nyc")
    WORK.mkdir(parents=True, exist_ok=True)
    for task_mode in ("at_time", "next"):
        built = {s: GBDTRanker(task_mode).table(nyc.splits[s], nyc.retriever()) for s in ("train", "validation", "test")}
        pickle.dump((built, None), open(WORK / f"nyc_{task_mode}.pkl", "wb"))
    sys.exit(0)
tables, _ = pickle.load(open(WORK / f"nyc_{mode}.pkl", "rb"))

class Scorer(nn.Module):
    def __init__(self, F, width, set_context, encoding, bins, real, dropout):
        super().__init__()
        self.set_context, self.encoding = set_context, encoding
        self.register_buffer("shift", torch.from_numpy(real.mean(0)).float())
        sd = real.std(0); self.register_buffer("scale", torch.from_numpy(np.where(sd > 1e-6, sd, 1)).float())
        inp = F
        if encoding == "ple":
            qs = np.quantile(real, np.linspace(0, 1, bins + 1), axis=0).T  # F, bins+1
            edges = []
            for q in qs:
                u = np.unique(q)
                if len(u) < 2: u = np.array([u[0], u[0] + 1])
                e = np.full(bins + 1, u[-1]); e[:len(u)] = u; e[len(u):] = u[-1]
                edges.append(e)
            e = torch.tensor(np.array(edges), dtype=torch.float32)
            self.register_buffer("lo", e[:, :-1]); self.register_buffer("width_", (e[:, 1:] - e[:, :-1]))
            inp = F + F * bins
        self.proj = nn.Linear(inp, width)
        if set_context == "mean":
            self.pool = nn.Linear(width, width)
        elif set_context == "attention":
            self.attn = nn.MultiheadAttention(width, 4, batch_first=True, dropout=dropout)
            self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
    def forward(self, x, mask):
        z = (x - self.shift) / self.scale
        if self.encoding == "ple":
            w = self.width_.clamp_min(1e-9)
            p = ((x[..., None] - self.lo) / w).clamp(0, 1)
            p = torch.where(self.width_ > 0, p, torch.zeros_like(p))
            z = torch.cat([z, p.flatten(-2)], -1)
        h = self.proj(z)
        m = mask[..., None].float()
        if self.set_context == "mean":
            pooled = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
            h = h + self.pool(torch.nn.functional.gelu(pooled))
        elif self.set_context == "attention":
            a, _ = self.attn(self.norm(h), self.norm(h), self.norm(h), key_padding_mask=~mask)
            h = h + torch.nan_to_num(a)
        s = self.mlp(h).squeeze(-1)
        return s.masked_fill(~mask, torch.finfo(s.dtype).min)

def scores(model, t):
    model.eval()
    with torch.no_grad():
        f = torch.from_numpy(t.candidates.features).float(); m = torch.from_numpy(t.candidates.mask)
        s = torch.cat([model(f[i:i+2048], m[i:i+2048]) for i in range(0, len(m), 2048)])
    return np.where(t.candidates.mask, s.double().numpy(), -np.inf)

def run(width=256, lr=1e-3, epochs=30, set_context="none", encoding="standard", bins=8, dropout=0.0, wd=0.0,
        batch=256, seed=0, patience=6):
    torch.manual_seed(seed); g = np.random.default_rng(seed)
    tr, va = tables["train"], tables["validation"]
    c = tr.candidates
    real = c.features[c.mask].astype(np.float64)
    model = Scorer(c.features.shape[-1], width, set_context, encoding, bins, real, dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    covered = np.flatnonzero(tr.hits.any(1))
    f, m = torch.from_numpy(c.features).float(), torch.from_numpy(c.mask)
    ids, tgt = torch.from_numpy(c.cell_ids), torch.from_numpy(tr.target_cell.copy())
    hist, best, state, waited = [], -1, None, 0
    for ep in range(epochs):
        model.train()
        order = g.permutation(covered)
        for i in range(0, len(order), batch):
            b = torch.from_numpy(order[i:i+batch])
            loss, _ = candidate_listwise_loss(model(f[b], m[b]), ids[b], tgt[b])
            opt.zero_grad(); loss.backward(); opt.step()
        h = hit_at_1(scores(model, va), va); hist.append(round(100*h, 2))
        if h > best: best, state, waited = h, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience: break
    model.load_state_dict(state)
    return model, hist

t0 = time.time()
for v in variants:
    kw = json.loads(v) if v.startswith("{") else {}
    if v == "gbdt":
        r = GBDTRanker(mode); r._fit(tables["train"], tables["validation"])
        sv, st = r.scores(tables["validation"]), r.scores(tables["test"])
        np.save(f"{WORK}/gbdt_{mode}_test.npy", st)
        print(json.dumps({"variant": "gbdt", "val": round(100*hit_at_1(sv, tables['validation']),2),
                          "test": round(100*hit_at_1(st, tables['test']),2), "best_iter": r.best_iteration,
                          "s": round(time.time()-t0)}), flush=True)
        continue
    model, hist = run(**kw)
    st = scores(model, tables["test"])
    name = "_".join(f"{k}{val}" for k, val in kw.items())
    np.save(f"{WORK}/mlp_{mode}_{name}_test.npy", st)
    print(json.dumps({"variant": kw, "val": max(hist), "test": round(100*hit_at_1(st, tables['test']),2),
                      "hist": hist, "s": round(time.time()-t0)}), flush=True)
