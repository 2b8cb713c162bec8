"""Pictures and the static HTML dashboard for the data team."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(set_eval, labels: list[str], role: str = "challenger"):
    plt = _pyplot()
    matrix = set_eval.confusion[role]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1 + 0.8 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center")
    ax.set_title(f"{set_eval.name}: {role}")
    fig.tight_layout()
    return fig


def _download_json(client, run_id: str | None, name: str) -> dict | None:
    import tempfile

    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())
    except Exception:  # a run without that artifact (failed mid-cycle) is reported as such
        return None


def batch_profile(path: Path, labels: list[str]) -> dict:
    """Size, label (stratum) shares and text-length profile of one batch file; `labels` first,
    then any other value the batch's `label` column holds (a family's derived strata)."""
    import pandas as pd

    frame = pd.read_parquet(path, columns=["text", "label"])
    lengths = frame["text"].fillna("").astype(str).str.len()
    shares = frame["label"].value_counts(normalize=True)
    shown = list(labels) + sorted(str(v) for v in shares.index if v not in labels)
    return {
        "rows": int(len(frame)),
        "label_share": {label: float(shares.get(label, 0.0)) for label in shown},
        "mean_chars": float(lengths.mean()) if len(frame) else float("nan"),
        "p95_chars": float(lengths.quantile(0.95)) if len(frame) else float("nan"),
    }


def collect_report(client, ws, config) -> dict:
    """Everything the dashboard shows, read from the registry, the runs and data/."""
    from tasks import quarantine
    from tasks.ingest import read_manifest
    from tasks.registry import CHAMPION, get_alias, list_versions, read_ledger

    name = config.registry.model_name
    champion = get_alias(client, name, CHAMPION)
    versions = []
    for ref in list_versions(client, name):
        mv = client.get_model_version(name, ref.version)
        versions.append(
            {
                "version": ref.version,
                "created": int(mv.creation_timestamp or 0),
                "tags": ref.tags,
                "evaluation": _download_json(client, ref.run_id, "evaluation.json"),
                "gate": _download_json(client, ref.run_id, "gate.json"),
            }
        )
    batches = []
    for entry in read_manifest(ws):
        batches.append(
            {
                "batch_id": entry["batch_id"],
                "status": "in data",
                **batch_profile(ws.batch_path(entry["batch_id"]), config.labels),
            }
        )
    for batch_id in quarantine.quarantined_ids(ws):
        batches.append(
            {
                "batch_id": batch_id,
                "status": "quarantined",
                **batch_profile(quarantine.batch_file(ws, batch_id), config.labels),
            }
        )
    from tasks.families import family_of

    # The family of the newest evaluation (the registry may hold another family's versions
    # than the config names, e.g. after `kaizen demo --task ...`).
    tasks = [(v.get("evaluation") or {}).get("task") for v in versions]
    family = family_of(next((t for t in reversed(tasks) if t), config.task))
    strata = [label for b in batches for label in b["label_share"]]
    return {
        "model": name,
        "champion": champion.version if champion else None,
        "ledger": [e.__dict__ for e in read_ledger(client, name)],
        "versions": versions,
        "batches": batches,
        "labels": list(dict.fromkeys(strata)) if batches else list(config.labels),
        "task": family.NAME,
        "metric": family.PRIMARY_METRIC,
        # The family's other floors and budgets, shown per version beside the primary metric.
        "extra_metrics": [m for m, *_ in family.floors(config.gate, False) if m != family.PRIMARY_METRIC],
    }


def _metric(version: dict, set_name: str, side: str, metric: str = "accuracy") -> float | None:
    evaluation = version.get("evaluation") or {}
    for s in evaluation.get("sets", []):
        if s["name"] == set_name:
            return (s.get(side) or {}).get(metric)
    return None


def _num(value) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _save_figure(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    _pyplot().close(fig)
    return name


def _plot_metrics(data: dict, out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = [int(v["version"]) for v in data["versions"]]
    metric = data.get("metric", "accuracy")
    for set_name in ("new", "regression", "golden"):
        ys = [_metric(v, set_name, "challenger", metric) for v in data["versions"]]
        if any(y is not None for y in ys):
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=f"{set_name} {metric}")
    ax.set_xlabel("model version")
    if metric != "perplexity":  # the others lie in [0, 1]
        ax.set_ylim(0, 1.02)
    ax.set_xticks(xs)
    ax.legend(loc="best")
    ax.set_title(f"challenger {metric} per version and evaluation set")
    return _save_figure(fig, out, "metrics.png")


def _plot_timeline(data: dict, out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    moves = data["ledger"]
    ax.step(range(1, len(moves) + 1), [int(m["to_version"]) for m in moves], where="post", marker="o")
    ax.set_xticks(range(1, len(moves) + 1), [f"{m['seq']}\n{m['action']}" for m in moves], fontsize=7)
    ax.set_ylabel("champion version")
    ax.set_title("champion timeline (ledger entries)")
    return _save_figure(fig, out, "timeline.png")


def _plot_drift(data: dict, out: Path) -> str:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [b["batch_id"] for b in data["batches"]]
    bottom = [0.0] * len(names)
    for label in data["labels"]:
        share = [b["label_share"].get(label, 0.0) for b in data["batches"]]
        left.bar(names, share, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, share, strict=True)]
    left.set_title("label share per batch")
    left.legend(fontsize=7)
    right.bar(names, [b["mean_chars"] for b in data["batches"]])
    right.set_title("mean text length (chars)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _save_figure(fig, out, "drift.png")


def _version_row(v: dict, champion: str | None, metric: str = "accuracy", extra: tuple[str, ...] = ()) -> str:
    from tasks.lineage import Lineage

    e, lineage = html.escape, Lineage.from_tags(v["tags"])
    cells = [
        _metric(v, "new", "challenger", metric),
        _metric(v, "new", "champion", metric),
        _metric(v, "regression", "challenger", metric),
        _metric(v, "regression", "champion", metric),
        *(_metric(v, "new", "challenger", m) for m in extra),
    ]
    return (
        f"<tr><td>v{e(v['version'])}{' (champion)' if v['version'] == champion else ''}</td>"
        f"<td>{e(', '.join(lineage.new_batches))}</td><td>{e(lineage.gate_verdict or '-')}</td>"
        + "".join(f"<td>{_num(c)}</td>" for c in cells)
        + f"<td><code>{e(lineage.data_md5)}</code></td></tr>"
    )


def _rule_item(r: dict) -> str:
    """One gate rule: value against threshold, its outcome (pass / FAIL / underpowered / not
    judged), and the power behind it: the interval's half-width and the smallest effect the set
    can resolve."""
    e = html.escape
    outcome = r.get("outcome") or ("pass" if r["passed"] else "fail")
    css = {"pass": "ok", "not judged": "ok", "underpowered": "warn"}.get(outcome, "bad")
    power = ""
    if r.get("half_width") is not None:
        power = f" &plusmn;{r['half_width']:.4f}, resolves {_num(r.get('resolvable'))}"
    return (
        f"<li class='{css}'><b>{e(outcome)}</b> {e(r['name'])}: {_num(r['value'])} "
        f"{e(r['op'])} {r['threshold']:g}{power} {e(r.get('note') or '')}</li>"
    )


def serving_periods(ledger: list[dict]) -> list[dict]:
    """Which version was champion (so served predictions) from when until when, and how it
    got there, from the ledger's champion moves."""
    from tasks.registry import CHAMPION_MOVES

    moves = [m for m in ledger if m["action"] in CHAMPION_MOVES]
    return [
        {
            "version": m["to_version"],
            "from": m["when"],
            "until": moves[i + 1]["when"] if i + 1 < len(moves) else None,
            "how": m["action"],
            "who": m["who"],
        }
        for i, m in enumerate(moves)
    ]


def _approvals_html(data: dict) -> str:
    from tasks.approval import DEADLINE_TAG, SINCE_TAG, STATE_TAG

    e = html.escape
    rows = [
        f"<tr><td>v{e(m['to_version'])}</td><td>{e(m['action'])}</td><td>{e(m['when'])}</td><td>{e(m['who'])}</td>"
        f"<td>{e(m['why'])}</td></tr>"
        for m in data["ledger"]
        if m["action"] in ("approve", "reject")
    ]
    rows += [
        f"<tr><td>v{e(v['version'])}</td><td>waiting</td><td>since {e(v['tags'].get(SINCE_TAG, ''))}</td><td>-</td>"
        f"<td>rejected if undecided at {e(v['tags'].get(DEADLINE_TAG, ''))}</td></tr>"
        for v in data["versions"]
        if v["tags"].get(STATE_TAG) == "waiting"
    ]
    if not rows:
        return "<p>No approval requested (gate.approval: auto).</p>"
    head = "<tr><th>version</th><th>decision</th><th>when</th><th>who</th><th>why</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(data: dict, out: Path) -> Path:
    """A static dashboard: index.html, pictures beside it, data.json; no server needed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(data, indent=1, default=str))
    pictures = [
        _plot_metrics(data, out),
        _plot_timeline(data, out) if data["ledger"] else None,
        _plot_drift(data, out) if data["batches"] else None,
    ]
    e = html.escape
    metric, extra = data.get("metric", "accuracy"), tuple(data.get("extra_metrics", ()))
    rows = [_version_row(v, data["champion"], metric, extra) for v in data["versions"]]
    gates = []
    for v in data["versions"]:
        gate = v.get("gate") or {}
        items = "".join(_rule_item(r) for r in gate.get("rules", []))
        gates.append(f"<h3>v{e(v['version'])}: {e(gate.get('verdict', 'no gate report'))}</h3><ul>{items}</ul>")
    ledger = "".join(
        f"<tr><td>{m['seq']}</td><td>{e(m['when'])}</td><td>{e(m['action'])}</td><td>v{e(str(m['from_version'] or '-'))}</td>"
        f"<td>v{e(m['to_version'])}</td><td>{e(m['who'])}</td><td>{e(m['why'])}</td></tr>"
        for m in data["ledger"]
    )
    served = "".join(
        f"<tr><td>v{e(p['version'])}</td><td>{e(p['from'])}</td><td>{e(p['until'] or 'now')}</td>"
        f"<td>{e(p['how'])}</td><td>{e(p['who'])}</td></tr>"
        for p in serving_periods(data["ledger"])
    )
    drift = "".join(
        f"<tr><td>{e(b['batch_id'])}</td><td>{e(b['status'])}</td><td>{b['rows']}</td>"
        + "".join(f"<td>{b['label_share'].get(label, 0.0):.3f}</td>" for label in data["labels"])
        + f"<td>{b['mean_chars']:.1f}</td><td>{b['p95_chars']:.1f}</td></tr>"
        for b in data["batches"]
    )
    label_heads = "".join(f"<th>share {e(label)}</th>" for label in data["labels"])
    images = "".join(f"<img src='{p}' alt='{p}'>" for p in pictures if p)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>kaizen: {e(data["model"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}.ok{{color:#176}}.bad{{color:#b21;font-weight:bold}}.warn{{color:#a60}}
img{{max-width:100%;margin:.5em 0;display:block}}</style></head><body>
<h1>kaizen: {e(data["model"])}</h1><p>Champion: <b>v{e(str(data["champion"] or "-"))}</b></p>
{images}
<h2>Champion timeline</h2><table><tr><th>#</th><th>when</th><th>action</th><th>from</th><th>to</th><th>who</th><th>why</th></tr>{ledger}</table>
<h2>Which version served when</h2><table><tr><th>champion</th><th>from</th><th>until</th><th>how</th><th>who</th></tr>{served}</table>
<h2>Approvals</h2>{_approvals_html(data)}
<h2>Versions</h2><table><tr><th>version</th><th>new batches</th><th>gate</th><th>new {e(metric)}</th>
<th>champion new {e(metric)}</th><th>regression {e(metric)}</th><th>champion regression {e(metric)}</th>
{"".join(f"<th>new {e(m)}</th>" for m in extra)}<th>data md5</th></tr>{"".join(rows)}</table>
<h2>Gate decisions</h2>{"".join(gates)}
<h2>Drift per batch</h2><table><tr><th>batch</th><th>status</th><th>rows</th>{label_heads}<th>mean chars</th><th>p95 chars</th></tr>{drift}</table>
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"
