"""Behaviour of the demo's champion (CheckList-style): minimum functionality, invariance,
direction. The demo runs for real (Prefect, DVC, GX, MLflow) with the tiny encoder; the
champion it leaves behind is loaded from the registry like `kaizen predict` does."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.demo_data import GADGET, RESTAURANT, make_domain_batch
from tests.conftest import make_workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def classify(tmp_path_factory, prefect_harness):
    import torch

    from flows.cli import main
    from models.classifier import load_classifier
    from tasks.config import load_config
    from tasks.featurize import tokenize_texts
    from tasks.inference import predict_proba
    from tasks.registry import CHAMPION, connect, download_model, get_alias
    from tasks.workspace import Workspace

    root = make_workspace(tmp_path_factory.mktemp("demo") / "ws")
    assert main(["demo", "--rows", "400", "--workspace", str(root)]) == 0
    ws = Workspace.at(root)
    config = load_config(ws.root)
    client = connect(ws, config)
    champion = get_alias(client, config.registry.model_name, CHAMPION)
    assert champion is not None and champion.version == "2"  # the shifted batch's challenger won
    model, tokenizer = load_classifier(str(download_model(client, champion, root.parent / "champion")), config.labels)

    def predict(texts: list[str]) -> np.ndarray:
        ids, offsets = tokenize_texts(texts, tokenizer, 64)
        rows = [ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))]
        return predict_proba(model, rows, tokenizer.pad_token_id, 32, torch.device("cpu"))

    return predict


@pytest.mark.parametrize("domain,name", [(RESTAURANT, "restaurants"), (GADGET, "gadgets")])
def test_minimum_functionality_on_unseen_reviews_of_both_domains(classify, domain, name):
    held_out = make_domain_batch(domain, name, 200, seed=99)
    predicted = classify(held_out["text"].tolist()).argmax(axis=1)
    truth = held_out["label"].map({"negative": 0, "positive": 1}).to_numpy()
    assert (predicted == truth).mean() >= 0.85, name


def test_invariance_to_the_thing_named(classify):
    pairs = [
        ("The pasta was delicious and the staff made our evening.", "The curry was delicious and the staff made our evening."),
        ("The soup tasted stale and the service was rude and slow.", "The salad tasted stale and the service was rude and slow."),
        ("The battery drains overnight and the charger crashes on launch.", "The keyboard drains overnight and the charger crashes on launch."),
    ]
    for a, b in pairs:
        pa, pb = classify([a, b])
        assert pa.argmax() == pb.argmax(), (a, b)


def test_direction_of_an_added_complaint(classify):
    base = ["The steak was cooked to perfection and the coffee was lovely.",
            "The hinge survived a drop onto tiles and the speaker runs silently under load."]
    worse = ["The steak was cooked to perfection and the coffee tasted stale.",
             "The hinge survived a drop onto tiles and the speaker crackles at half volume."]
    for b, w in zip(base, worse):
        p_base, p_worse = classify([b, w])
        assert p_worse[1] < p_base[1], (b, w)  # a complaint lowers P(positive)
