"""Where the validate and version steps spend their seconds on a cycle-sized batch, each phase in a fresh Python
process (as an Airflow task starts), median of --repeats:

validate (2,000 clean examples, both suites, the Data Docs site): import pandas, import Great Expectations, the
ephemeral context and checkpoint, the checkpoint run, the Data Docs build, the offline rewrite;
version (a set-up DVC project, the remote already configured): the project check before (`dvc remote add` and
`dvc remote modify`, two `python -m dvc` starts, every time) next to after (jobs.release.dvc.ensure_dvc_project
reads .dvc/config and runs nothing; timed after the imports the version step makes anyway), and `dvc add` of a
2 MB version folder for scale.

Writes step_overhead.json next to this file and prints a Markdown table.

Run: .venv/bin/python benchmarks/freshness/step_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

VALIDATE_PHASES = r"""
import json, os, sys, tempfile, time
from pathlib import Path
os.environ["GX_ANALYTICS_ENABLED"] = "false"
sys.path.insert(0, sys.argv[1])
t = {}
s = time.perf_counter(); import pandas; t["import pandas"] = time.perf_counter() - s
s = time.perf_counter(); import great_expectations; t["import great_expectations"] = time.perf_counter() - s
from tests.jobs.validation.test_validate import clean_examples
from jobs.validation import validate as v
from jobs.validation.data_docs import make_site_offline
frame = clean_examples(2000)
docs = Path(tempfile.mkdtemp()) / "data_docs"
suites = [v.load_suite_json("features.examples"), v.load_suite_json("events.raw")]
params = {"max_timestamp": 9e12, "min_rows": 1, "max_rows": None, "examples_min_rows": 1, "examples_max_rows": None}
s = time.perf_counter(); ctx = v.gx_context(docs); cp = v.add_checkpoint(ctx, suites, "examples")
t["GX context and checkpoint"] = time.perf_counter() - s
s = time.perf_counter(); res = cp.run(batch_parameters={"dataframe": frame}, expectation_parameters=params)
for key, val in res.run_results.items():
    ctx.validation_results_store.set(key, val)
t["checkpoint run (2 suites)"] = time.perf_counter() - s
s = time.perf_counter(); ctx.build_data_docs(site_names=["tidal"]); t["Data Docs build"] = time.perf_counter() - s
s = time.perf_counter(); make_site_offline(docs); t["Data Docs offline rewrite"] = time.perf_counter() - s
print(json.dumps(t))
"""

ENSURE_AFTER = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from jobs.release.dvc import ensure_dvc_project  # the version step has these imported already
from tidal.config import load_settings
settings = load_settings()
s = time.perf_counter()
ensure_dvc_project(Path(sys.argv[2]), settings)
print(json.dumps({"after": time.perf_counter() - s}))
"""


def run_script(code: str, *args: str, env: dict[str, str]) -> str:
    """A script from a file in a fresh interpreter (under `python -c`, importing great_expectations ends the process
    with status 0 and no output), its stdout's last line."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(code)
    try:
        out = subprocess.run([sys.executable, script.name, *args], env=env, check=True, capture_output=True, text=True)
    finally:
        os.unlink(script.name)
    return out.stdout.splitlines()[-1]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def version_phases(env: dict[str, str]) -> dict[str, float]:
    """One run: the project check before and after, and `dvc add`, in a fresh DVC project."""
    python = sys.executable
    project = Path(tempfile.mkdtemp(prefix="tidal-dvc-"))
    version_dir = project / "registry" / "versions" / "v000001"
    version_dir.mkdir(parents=True)
    (version_dir / "model.pt").write_bytes(os.urandom(2_000_000))
    dvc = [python, "-m", "dvc"]
    endpoint = env["TIDAL_S3_ENDPOINT"]
    timed(dvc + ["init", "--no-scm", "-q"], project, env)
    before = timed(dvc + ["remote", "add", "--force", "--default", "artifacts", "s3://tidal/dvc"], project, env) + \
        timed(dvc + ["remote", "modify", "artifacts", "endpointurl", endpoint], project, env)
    out = run_script(ENSURE_AFTER, str(REPO), str(project), env=env)
    add = timed(dvc + ["add", "-q", "registry/versions/v000001"], project, env)
    return {"project check before (remote add + modify)": before,
            "project check after (config read)": json.loads(out)["after"],
            "dvc add (2 MB folder)": add}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per phase (1..20; default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be 1..20")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TIDAL_S3_ENDPOINT": "http://127.0.0.1:18333",
           "GX_ANALYTICS_ENABLED": "false"}
    validate = [json.loads(run_script(VALIDATE_PHASES, str(REPO), env=env)) for _ in range(args.repeats)]
    version = [version_phases(env) for _ in range(args.repeats)]
    result = {"repeats": args.repeats, "load_average": os.getloadavg(),
              "validate_s": {k: round(statistics.median(r[k] for r in validate), 3) for k in validate[0]},
              "version_s": {k: round(statistics.median(r[k] for r in version), 3) for k in version[0]}}
    before = result["version_s"]["project check before (remote add + modify)"]
    after = result["version_s"]["project check after (config read)"]
    result["version_project_check_after_over_before"] = round(after / before, 4)
    (Path(__file__).parent / "step_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| step | phase | median s |", "|---|---|---|"]
    lines += [f"| validate | {k} | {v:.3f} |" for k, v in result["validate_s"].items()]
    lines += [f"| version | {k} | {v:.3f} |" for k, v in result["version_s"].items()]
    print("\n".join(lines) + f"\n\nproject check after/before: {result['version_project_check_after_over_before']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
