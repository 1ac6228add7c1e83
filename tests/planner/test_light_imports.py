"""The planner needs no torch and no model code: profiles in, plan out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_planning_imports_no_torch_and_no_model_code() -> None:
    script = (
        "import sys, json\n"
        "import planner\n"
        "from planner.cli import run\n"
        "from planner.estimate import model_shape, model_profile, cluster_from_json\n"
        "from planner.synthetic import random_cluster, synthetic_model\n"
        "import numpy as np\n"
        "m = synthetic_model(4, hidden=128, seq=16)\n"
        "c = random_cluster(np.random.default_rng(0), 3, m, memory_mib=(100, 200))\n"
        "p = planner.plan(c, m, 'parallel-adapters', 8)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in\n"
        "             ('torch', 'transformers', 'peft', 'safetensors', 'pac', 'agent',\n"
        "              'coordinator'))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
