"""The demo CODI model's thoughts on 30 GSM8K problems, in memory; a probe at one site."""

import os
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from opcircuits import load_codi, run_batch
from opcircuits.data.annotations import CATEGORIES, label_record
from opcircuits.data.gsm8k import load_local

repo = Path(__file__).resolve().parents[1]  # GSM8K: $OPCIRCUITS_GSM8K_DIR or ../shared/data/gsm8k
gsm8k = os.environ.get("OPCIRCUITS_GSM8K_DIR") or repo.parent / "shared" / "data" / "gsm8k"
by_category = {c: [] for c in CATEGORIES}
for p in load_local(gsm8k):  # every problem, labelled by the operators its solution uses
    by_category.get(label_record(p).category, []).append(p)
problems = [p for c in CATEGORIES for p in by_category[c][:10]]  # 10 per category
y = [c for c in CATEGORIES for _ in range(10)]
model, tokenizer = load_codi("demo", device="cpu")
out = run_batch(model, tokenizer, [p["question"] for p in problems], layers=[2], max_new_tokens=16)
X = out.hidden[:, 3, 0].float().numpy()  # the site: position latent_3 (0 is bot), layer 2
accuracy = cross_val_score(LogisticRegression(max_iter=2000), X, y, cv=5).mean()
print(f"probe at latent_3, layer 2: accuracy {accuracy:.2f} over {len(y)} problems (chance 0.33)")
