"""Quickstart: the shipped demo CODI model's continuous thoughts on 30 GSM8K problems (in memory),
and a linear probe for the operation category at one site. Run: python examples/quickstart.py"""

import os
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from opcircuits import load_codi, run_batch
from opcircuits.data.annotations import CATEGORIES, label_record
from opcircuits.data.gsm8k import load_local

# GSM8K's train.jsonl/test.jsonl: $OPCIRCUITS_GSM8K_DIR, else ../shared/data/gsm8k
gsm8k = os.environ.get("OPCIRCUITS_GSM8K_DIR") or Path(__file__).resolve().parents[2] / "shared/data/gsm8k"
labels = {p["id"]: label_record(p).category for p in (problems := load_local(gsm8k))}
chosen = [[p for p in problems if labels[p["id"]] == c][:10] for c in CATEGORIES]  # 10 each
problems, y = [p for group in chosen for p in group], [c for c in CATEGORIES for _ in range(10)]
model, tokenizer = load_codi("demo", device="cpu")
out = run_batch(model, tokenizer, [p["question"] for p in problems], layers=[2], max_new_tokens=16)
X = out.hidden[:, 3, 0].float().numpy()  # the site: position latent_3 (0 is bot), layer 2
accuracy = cross_val_score(LogisticRegression(max_iter=2000), X, y, cv=5).mean()
print(f"probe at latent_3, layer 2: accuracy {accuracy:.2f} over {len(y)} problems (chance 0.33)")
