"""One prediction function: `kaizen predict`, the registered MLflow pyfunc and the tests
label a text identically, including texts longer than `model.max_length`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

LONG = " ".join(["the battery drains overnight but the screen is lovely"] * 40)  # ~400 tokens
TEXTS = ["The soup was delicious.", LONG, LONG + " and then it broke for good, awful, awful, awful."]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    from models.base import save_model
    from models.classifier import build_tiny
    from tasks.context import Context
    from tasks.registry import ensure_experiment, register_challenger
    from tests.conftest import make_workspace

    root = make_workspace(tmp_path_factory.mktemp("predict") / "ws")
    ctx = Context.open(root)
    model_dir = save_model(*build_tiny(ctx.config.labels, seed=11), root.parent / "model")
    run = ctx.client.create_run(ensure_experiment(ctx.client, ctx.ws, ctx.config))
    ref = register_challenger(ctx.client, ctx.config, run.info.run_id, model_dir, {}, TEXTS[:1])
    return ctx, ref.version, model_dir


def test_cli_pyfunc_and_library_agree_on_long_texts(registered, capsys):
    import mlflow

    from flows.cli import main
    from models.classifier import load_saved_classifier
    from tasks.inference import predict_registered, predict_texts

    ctx, version, model_dir = registered
    max_length = ctx.config.model.max_length
    model, tokenizer = load_saved_classifier(model_dir)
    assert len(tokenizer(TEXTS[1])["input_ids"]) > max_length  # the case that used to diverge

    library = predict_texts(model, tokenizer, TEXTS, max_length)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{ctx.model_name}/{version}").predict(pd.DataFrame({"text": TEXTS}))
    _, via_cli_function = predict_registered(ctx, TEXTS, version)
    columns = [f"p_{label}" for label in ctx.config.labels]
    np.testing.assert_allclose(pyfunc[columns].to_numpy(), library, rtol=0, atol=1e-6)
    np.testing.assert_allclose(via_cli_function[columns].to_numpy(), library, rtol=0, atol=1e-6)
    assert list(pyfunc["label"]) == [ctx.config.labels[i] for i in library.argmax(axis=1)]

    capsys.readouterr()
    assert main(["predict", "--version", version, "--workspace", str(ctx.ws.root), *TEXTS]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [p[0] for p in printed] == list(pyfunc["label"])
    assert [p[1] for p in printed] == [f"{s:.3f}" for s in library.max(axis=1)]


def test_truncation_is_the_training_rule(registered):
    """Two texts that differ only after `max_length` tokens are, by the one rule, the same input."""
    from models.classifier import load_saved_classifier
    from tasks.inference import predict_texts

    ctx, _, model_dir = registered
    model, tokenizer = load_saved_classifier(model_dir)
    proba = predict_texts(model, tokenizer, TEXTS[1:], ctx.config.model.max_length)
    np.testing.assert_array_equal(proba[0], proba[1])
    untruncated = predict_texts(model, tokenizer, TEXTS[1:], 512)
    assert not np.array_equal(untruncated[0], untruncated[1])
