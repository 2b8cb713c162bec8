"""The demo corpora of token classification and causal LM, generated from templates written for
kaizen (no download). Each tells the classification demo's story in its family's terms:

  1. a first batch                  -> bootstraps the champion
  2. a shifted batch                -> the challenger learns what is new and is promoted
  3. a malformed export             -> validation quarantines it, naming rows and rules
  4. a corrupted batch              -> the gate rejects the challenger

Token classification: news sentences (people, places, organisations), then gadget launches
(products, an entity type the first batch never shows), then an export with bad tag rows, then
sentences whose tags were shuffled. Causal LM: an internet provider's support replies, then
the replies after a tablet launch (new product names and problems), then an export of blank
and mis-encoded texts, then text of random words.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

# --- token classification ----------------------------------------------------------------------

TAGS = ["O", "B-person", "I-person", "B-location", "I-location", "B-org", "I-org", "B-product", "I-product"]

FIRST = (
    "Maria John Aiko Kwame Priya Lars Sofia Omar Elena Diego Mei Tomas Grace Yusuf Ingrid Rafael Nadia Felix Amara Hugo"
)
LAST = "Lopez Smith Tanaka Mensah Sharma Berg Rossi Haddad Petrova Silva Chen Novak Okafor Demir Larsen Costa Ali Wagner Obi Moreau"
PLACES = [
    "Paris", "Lagos", "Berlin", "Buenos Aires", "Osaka", "Nairobi", "Toronto", "Lisbon", "New York", "Cape Town",
    "Oslo", "Mumbai", "San Diego", "Hanoi", "Quito", "Dublin", "Kraków", "Accra", "Seoul", "Lima",
]  # fmt: skip
ORGS = [
    "Acme Corp", "Globex", "Initech", "Umbrella Health", "Stark Logistics", "Wayne Foods", "Hooli", "Vandelay Imports",
    "Soylent Labs", "Cyberdyne", "Tyrell Energy", "Wonka Sweets", "Gringotts Bank", "Oceanic Air",
]  # fmt: skip
BRANDS = ["Zephyr", "Nimbus", "Quark", "Aurora", "Vortex", "Lumen", "Helix", "Orbit", "Pulse", "Tundra"]
MODELS = ["X2", "Pad", "Watch 3", "Buds", "Mini", "Pro Max", "Air", "Go", "Ultra", "Fold"]
WHEN = ["on Monday", "last week", "this morning", "yesterday", "in March", "on Friday night", "today", "in the spring"]
QUIET = [
    "the weather stayed mild {when}",
    "prices rose again {when}",
    "traffic was light {when}",
    "the meeting ran late {when}",
    "nothing much happened {when}",
]

NEWS = [
    "{person} visited {location} {when}",
    "{person} met {person} in {location} {when}",
    "the mayor of {location} praised {org} {when}",
    "{org} opened an office in {location} {when}",
    "{person} now works for {org}",
    "{when} {person} arrived in {location}",
    "{org} hired {person} as chief engineer",
    "{person} left {location} for {location} {when}",
]
GADGETS = [
    "{org} launched the {product} {when}",
    "the {product} sold out in {location} {when}",
    "{person} reviewed the {product} for {org}",
    "critics said the {product} beats the {product}",
    "{when} {org} recalled the {product}",
    "the new {product} ships from {location}",
    "{person} prefers the {product} to the {product}",
    "{org} cut the price of the {product} {when}",
]


def _slot(kind: str, rng: random.Random) -> list[str]:
    if kind == "person":
        return [rng.choice(FIRST.split()), rng.choice(LAST.split())]
    if kind == "location":
        return rng.choice(PLACES).split()
    if kind == "org":
        return rng.choice(ORGS).split()
    return [rng.choice(BRANDS), *rng.choice(MODELS).split()]


def _sentence(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for part in template.replace("{when}", rng.choice(WHEN)).split():
        if part.startswith("{") and part.endswith("}"):
            kind = part[1:-1]
            words = _slot(kind, rng)
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(part)
            tags.append("O")
    return tokens, tags


def ner_batch(templates: list[str], domain: str, rows: int, seed: int) -> pd.DataFrame:
    """`rows` distinct sentences, one in eight without any entity."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < rows:
        template = rng.choice(QUIET) if rng.random() < 0.125 else rng.choice(templates)
        tokens, tags = _sentence(template, rng)
        key = " ".join(tokens)
        if key not in seen:
            seen.add(key)
            out.append({"tokens": key, "tags": " ".join(tags), "domain": domain})
    return pd.DataFrame(out)


def ner_malformed(rows: int, seed: int) -> pd.DataFrame:
    """An export gone wrong: a tag missing, an I- tag after O, a tag nobody declared."""
    frame = ner_batch(GADGETS, "gadgets", rows, seed)
    for i in range(0, rows, 9):
        frame.loc[i, "tags"] = " ".join(frame.loc[i, "tags"].split()[:-1])
    for i in range(4, rows, 13):
        frame.loc[i, "tags"] = "I-person " + " ".join(["O"] * (len(frame.loc[i, "tokens"].split()) - 1))
    for i in range(6, rows, 17):
        frame.loc[i, "tags"] = " ".join("B-gadget" if t == "B-product" else t for t in frame.loc[i, "tags"].split())
    return frame


def ner_shuffled(rows: int, seed: int) -> pd.DataFrame:
    """Both domains, the tag sequences shuffled among sentences of the same length: every row
    is still well-formed BIO (validation passes it), but entities sit on the wrong words."""
    frame = pd.concat(
        [ner_batch(NEWS, "news", rows // 2, seed), ner_batch(GADGETS, "gadgets", rows - rows // 2, seed + 1)],
        ignore_index=True,
    )
    lengths = frame["tokens"].str.count(" ")
    for _, rows_of_length in frame.groupby(lengths).groups.items():
        index = list(rows_of_length)
        moved = index[1:] + index[:1]  # a rotation: no sentence keeps its own tags when others share its length
        frame.loc[index, "tags"] = frame.loc[moved, "tags"].to_numpy()
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


# --- causal LM ---------------------------------------------------------------------------------

DEVICES = ["router", "modem", "set-top box", "mesh extender", "landline adapter", "fibre terminal"]
SYMPTOMS = [
    "keeps dropping the connection",
    "shows a blinking red light",
    "is slow in the evening",
    "will not turn on",
    "lost its settings after the storm",
    "restarts every hour",
]
STEPS = [
    "restart the {device} and wait two minutes",
    "check that the cable is pushed firmly into the wall socket",
    "hold the reset button for ten seconds",
    "move the {device} away from the microwave",
    "update the firmware from the settings page",
    "plug the {device} straight into the wall instead of an extension lead",
]
CLOSERS = ["Reply here if it keeps happening.", "Let us know how it goes.", "Your case stays open for a week."]
TABLETS = ["Nimbus Pad 2", "Nimbus Pad Mini", "Zephyr Tab S", "Zephyr Tab Lite"]
TABLET_SYMPTOMS = [
    "will not sync photos to the cloud",
    "drains its battery overnight",
    "shows the stylus offset by a few millimetres",
    "freezes when the keyboard cover is attached",
    "cannot find the home wifi after the update",
]
TABLET_STEPS = [
    "open Settings, then Accounts, and sign in to Nimbus Cloud again",
    "turn off Background Refresh for the Gallery app",
    "recalibrate the stylus under Settings, then Pen",
    "detach the keyboard cover and clean the magnetic connector",
    "forget the network and join it again with the new password",
]


def _reply(rng: random.Random, device: str, symptom: str, steps: list[str]) -> str:
    step = rng.choice(steps).format(device=device)
    return f"Hi {rng.choice(FIRST.split())}, sorry your {device} {symptom}. Please {step}. {rng.choice(CLOSERS)}"


def lm_batch(domain: str, rows: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < rows:
        if domain == "tablets":
            text = _reply(rng, f"new {rng.choice(TABLETS)}", rng.choice(TABLET_SYMPTOMS), TABLET_STEPS)
        else:
            text = _reply(rng, rng.choice(DEVICES), rng.choice(SYMPTOMS), STEPS)
        if text not in seen:
            seen.add(text)
            out.append({"text": text, "domain": domain})
    return pd.DataFrame(out)


def lm_malformed(rows: int, seed: int) -> pd.DataFrame:
    """An export gone wrong: blank replies and mis-encoded ones."""
    frame = lm_batch("tablets", rows, seed)
    frame.loc[frame.index[::6], "text"] = "  "
    frame.loc[frame.index[2::5], "text"] = frame.loc[frame.index[2::5], "text"].str.replace("'", "â€™") + " Ã©"
    return frame


def lm_random_words(rows: int, seed: int) -> pd.DataFrame:
    """Text of words drawn at random from a 20,000-word English vocabulary (MiniLM's, shipped
    offline): it reads like words and says nothing, and it spreads a model's probability over
    the whole vocabulary, away from the domain's replies."""
    from models.base import minilm_dir

    rng = random.Random(seed)
    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").split()
    vocabulary = sorted({w for w in words if w.isalpha() and w.isascii() and len(w) > 2})
    texts = [" ".join(rng.choices(vocabulary, k=rng.randint(18, 30))) for _ in range(rows)]
    return pd.DataFrame({"text": texts, "domain": "random"})


# --- the feeds ---------------------------------------------------------------------------------


def _write(target: Path, frames: list[tuple[str, str, pd.DataFrame]]) -> list[tuple[str, Path, str]]:
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for batch_id, description, frame in frames:
        path = target / f"{batch_id}.csv"
        frame.to_csv(path, index=False)
        out.append((batch_id, path, description))
    return out


def write_ner_batches(target: Path, rows: int = 600, seed: int = 2026) -> list[tuple[str, Path, str]]:
    return _write(
        target,
        [
            ("demo-1-news", "first batch: people, places, organisations", ner_batch(NEWS, "news", rows, seed)),
            ("demo-2-gadgets", "shifted batch: product launches", ner_batch(GADGETS, "gadgets", rows, seed + 10)),
            ("demo-3-malformed", "export with bad tag rows", ner_malformed(rows // 2, seed + 20)),
            ("demo-4-shuffled", "tags moved to other sentences", ner_shuffled(rows, seed + 30)),
        ],
    )


def write_lm_batches(target: Path, rows: int = 200, seed: int = 2026) -> list[tuple[str, Path, str]]:
    return _write(
        target,
        [
            ("demo-1-support", "first batch: support replies", lm_batch("support", rows, seed)),
            ("demo-2-tablets", "shifted batch: replies after a tablet launch", lm_batch("tablets", rows, seed + 10)),
            ("demo-3-malformed", "export with blank and mis-encoded texts", lm_malformed(rows // 2, seed + 20)),
            ("demo-4-random", "random words", lm_random_words(rows, seed + 30)),
        ],
    )


# A 135M-parameter decoder trains at about five short documents a second on 2 CPU cores: the LM
# demo keeps under 10 minutes with 200 documents a batch, two epochs at a high LoRA rate, a
# quarter of the new rows replayed, and a test split of 20% (40 documents, the gate's evidence).
LM_DEMO_SETTINGS = {
    "train.epochs": 2,
    "train.lr": 2.0e-3,
    "train.replay_fraction": 0.25,
    "data.split": {"train": 0.7, "validation": 0.1, "test": 0.2},
}


def demo_feed(task: str, target: Path, rows: int | None) -> tuple[list[tuple[str, Path, str]], dict]:
    """The demo batches of `task`'s family, written under `target`, and the config overrides
    they run with (the labels they need, and the LM demo's shorter training)."""
    from tasks.demo_data import LABELS, write_demo_batches

    feeds = {
        "classification": (write_demo_batches, 600, {"labels": LABELS}),
        "token-classification": (write_ner_batches, 600, {"labels": TAGS}),
        "causal-lm": (write_lm_batches, 200, LM_DEMO_SETTINGS),
    }
    write, default_rows, settings = feeds[task]
    return write(target, rows or default_rows), dict(settings)
