"""Gate settings shared by the gate tests (tests/code/test_gate.py, test_gate_policy.py)."""

from tasks.config import GateConfig

LABELS = ["negative", "positive"]
POLICY = GateConfig(
    min_accuracy_new=0.7,
    min_macro_f1_new=0.6,
    noninferiority_margin=0.02,
    min_improvement_new=0.0,
    min_eval_rows=10,
    min_slice_rows=30,
    max_ece=0.3,
    max_latency_ratio=1.5,
)
LATENCY = {"challenger": {"p50": 1.0, "p95": 1.2}, "champion": {"p50": 1.0, "p95": 1.1}}
