"""The demo's own small corpus, generated from templates written for kaizen.

Four batches tell the story of a continual pipeline:
  1. restaurant reviews            -> bootstraps the champion
  2. gadget reviews (a shift: new vocabulary, complaints without sentiment adjectives)
                                   -> the challenger learns them and is promoted
  3. a corrupt export (blank texts, a label nobody declared)
                                   -> validation quarantines it
  4. gadget + restaurant reviews with 40% of labels flipped
                                   -> the gate rejects the challenger
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

LABELS = ["negative", "positive"]

RESTAURANT = {
    "subject": [
        "the pasta",
        "the soup",
        "our waiter",
        "the dessert",
        "the steak",
        "the curry",
        "the service",
        "the brunch menu",
        "the pizza",
        "the coffee",
        "the staff",
        "the wine list",
        "the salad",
        "the burger",
        "the dumplings",
        "the seafood platter",
    ],
    "positive": [
        "was delicious",
        "was absolutely wonderful",
        "was fresh and tasty",
        "was friendly and quick",
        "was cooked to perfection",
        "exceeded our expectations",
        "was the best in town",
        "was lovely",
        "was generous and flavourful",
        "made our evening",
    ],
    "negative": [
        "was cold and bland",
        "was awful",
        "tasted stale",
        "was rude and slow",
        "was overcooked",
        "was a huge disappointment",
        "was the worst we have had",
        "was greasy and tasteless",
        "made us wait an hour",
        "ruined the evening",
    ],
    "closer_pos": ["we will be back", "highly recommended", "worth every penny", "five stars", ""],
    "closer_neg": ["never again", "avoid this place", "not worth the money", "one star", ""],
}

GADGET = {
    "subject": [
        "the battery",
        "the charger",
        "the touchscreen",
        "the bluetooth pairing",
        "the firmware update",
        "the camera app",
        "the keyboard",
        "the fan",
        "the speaker",
        "the wifi adapter",
        "the hinge",
        "the fingerprint reader",
        "the power button",
        "the usb port",
        "the docking station",
    ],
    "positive": [
        "lasts two full days",
        "pairs instantly every time",
        "responds to the lightest touch",
        "charges the laptop in under an hour",
        "runs silently under load",
        "survived a drop onto tiles",
        "installed in a minute and fixed the lag",
        "still works after three years",
        "connects on the first try",
        "keeps the laptop cool all day",
    ],
    "negative": [
        "drains overnight",
        "stopped charging after a week",
        "registers phantom taps",
        "drops the connection every few minutes",
        "bricked the device",
        "crashes on launch",
        "sticks after a month",
        "sounds like a jet engine",
        "crackles at half volume",
        "snapped on day three",
    ],
    "closer_pos": ["would buy it again", "returning customer", "money well spent", ""],
    "closer_neg": ["sent it back", "asked for a refund", "support never replied", ""],
}


def _sentences(domain: dict, label: str, n: int, rng: random.Random) -> list[str]:
    kind = "positive" if label == "positive" else "negative"
    closer = domain["closer_pos" if kind == "positive" else "closer_neg"]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        first, second = rng.sample(domain["subject"], 2)
        a, b = rng.sample(domain[kind], 2)
        tail = rng.choice(closer)
        text = f"{first.capitalize()} {a} and {second} {b}." + (f" {tail.capitalize()}." if tail else "")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def make_domain_batch(domain: dict, name: str, rows: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    half = rows // 2
    frame = pd.DataFrame(
        [{"text": t, "label": "positive", "domain": name} for t in _sentences(domain, "positive", half, rng)]
        + [{"text": t, "label": "negative", "domain": name} for t in _sentences(domain, "negative", rows - half, rng)]
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def make_corrupt_batch(rows: int, seed: int) -> pd.DataFrame:
    """An export gone wrong: blank texts and a label that is not in the declared set."""
    frame = make_domain_batch(GADGET, "gadgets", rows, seed)
    frame.loc[frame.index[::7], "text"] = "   "
    frame.loc[frame.index[3::11], "label"] = "neutral"
    return frame


def make_noised_batch(rows: int, seed: int, flip: float = 0.4) -> pd.DataFrame:
    frame = pd.concat(
        [
            make_domain_batch(GADGET, "gadgets", rows // 2, seed),
            make_domain_batch(RESTAURANT, "restaurants", rows - rows // 2, seed + 1),
        ],
        ignore_index=True,
    )
    rng = random.Random(seed)
    flipped = rng.sample(range(len(frame)), int(flip * len(frame)))
    frame.loc[flipped, "label"] = frame.loc[flipped, "label"].map({"positive": "negative", "negative": "positive"})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


DEMO_BATCHES = [
    ("demo-1-restaurants", "first batch: bootstraps the champion"),
    ("demo-2-gadgets", "shifted batch: new domain"),
    ("demo-3-corrupt", "corrupt export"),
    ("demo-4-noised", "40% of labels flipped"),
]


def write_demo_batches(target: Path, rows: int = 600, seed: int = 2026) -> list[tuple[str, Path, str]]:
    """Write the four demo CSV files; returns (batch_id, path, description)."""
    target.mkdir(parents=True, exist_ok=True)
    frames = [
        make_domain_batch(RESTAURANT, "restaurants", rows, seed),
        make_domain_batch(GADGET, "gadgets", rows, seed + 10),
        make_corrupt_batch(rows // 2, seed + 20),
        make_noised_batch(rows, seed + 30),
    ]
    out = []
    for (batch_id, description), frame in zip(DEMO_BATCHES, frames, strict=True):
        path = target / f"{batch_id}.csv"
        frame.to_csv(path, index=False)
        out.append((batch_id, path, description))
    return out


def read_labelled(source: Path, task: str = "classification") -> pd.DataFrame:
    """A labelled file in the family's columns, lists joined into strings (so a batch file can be
    CSV); integer class labels are named from a `label_names.txt` beside it, if any."""
    from tasks.families import family_of
    from tasks.ingest import IngestError, check_columns, read_table

    family = family_of(task)
    frame = read_table(source)
    check_columns(frame, str(source), family.COLUMNS)
    own = family.prepare(frame)
    for column in family.COLUMNS:
        frame[column] = own[column]
    if "label" not in family.COLUMNS:
        return frame
    frame["label"] = frame["label"].astype(str)
    names_file = source.parent / "label_names.txt"
    if names_file.exists() and frame["label"].str.fullmatch(r"\d+").all():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        index = frame["label"].astype(int)
        if index.max() >= len(names):
            raise IngestError(f"{source}: label {index.max()} has no name in {names_file}")
        frame["label"] = index.map(lambda i: names[i])
    return frame


def split_source(
    source: Path,
    target: Path,
    batches: int,
    rows_per_batch: int | None,
    shuffle: bool,
    order_by: str | None = None,
    seed: int = 2026,
    prefix: str = "",
    task: str = "classification",
) -> tuple[list[tuple[str, Path, str]], list[str] | None]:
    """Cut a labelled file into consecutive batch files; returns the feed and the label set
    (None for a family without labels).

    History is replayed in file order (or `order_by`); `shuffle` mixes it first (the demo).
    """
    from tasks.families import family_of
    from tasks.ingest import IngestError

    frame = read_labelled(source, task)
    labels = family_of(task).label_set(family_of(task).prepare(frame))
    if order_by:
        if order_by not in frame.columns:
            raise IngestError(f"{source}: no column {order_by!r} to order by")
        frame = frame.sort_values(order_by, kind="stable")
    elif shuffle:
        frame = frame.sample(frac=1.0, random_state=seed)
    frame = frame.reset_index(drop=True)
    size = rows_per_batch or len(frame) // batches
    if size < 1:
        raise IngestError(f"{source}: {len(frame)} rows cannot make {batches} batches")
    target.mkdir(parents=True, exist_ok=True)
    feed = []
    for i in range(batches):
        part = frame.iloc[i * size : (i + 1) * size]
        if part.empty:
            break
        batch_id = f"{prefix}{source.stem}-{i + 1:03d}"[:100]
        path = target / f"{batch_id}.csv"
        part.to_csv(path, index=False)
        feed.append((batch_id, path, f"rows {i * size}-{i * size + len(part) - 1} of {source.name}"))
    return feed, labels
