"""The Python front door (`from opcircuits import …`) and the quickstart example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_import_opcircuits_and_its_cli_do_not_import_torch():
    res = _python(
        "import sys\n"
        "import opcircuits, opcircuits.cli, opcircuits.options, opcircuits.pipeline.config\n"
        "from opcircuits import open_store, write_store, ExtractOptions, AnalyzeOptions, run\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
        "from opcircuits import load_codi, run_batch, CodiModel, extract, analyze\n"
        "assert 'torch' in sys.modules\n"
        "print(sorted(opcircuits.__all__))\n"
    )
    assert res.returncode == 0, res.stderr
    names = set(eval(res.stdout))  # noqa: S307 - our own printed list
    expected = {"open_store", "write_store", "load_codi", "run_batch", "extract"}
    expected |= {"ExtractOptions", "analyze", "AnalyzeOptions", "run", "CodiModel"}
    assert expected <= names


def test_front_door_names_are_the_library_functions():
    import opcircuits
    from opcircuits import AnalyzeOptions, ExtractOptions, analyze, extract, load_codi, open_store
    from opcircuits.codi.checkpoint import load_codi as load_codi_fn
    from opcircuits.extract import extract as extract_fn
    from opcircuits.options import AnalyzeOptions as A
    from opcircuits.options import ExtractOptions as E
    from opcircuits.report.analyze import analyze as analyze_fn
    from opcircuits.store import open_store as open_store_fn

    assert (analyze, load_codi, open_store) == (analyze_fn, load_codi_fn, open_store_fn)
    assert (AnalyzeOptions, ExtractOptions) == (A, E)
    # `opcircuits.extract` is also the module's name: either way, calling it extracts
    assert callable(extract) and callable(opcircuits.extract)
    assert opcircuits.extract.extract is extract_fn


def test_quickstart_runs_and_probes_one_site(gsm8k_dir):
    script = REPO / "examples" / "quickstart.py"
    assert len(script.read_text().splitlines()) < 25
    res = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO.parent,  # the script finds GSM8K relative to itself, not to the working dir
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    match = re.fullmatch(
        r"probe at latent_3, layer 2: accuracy (\d\.\d\d) over 30 problems \(chance 0\.33\)\n",
        res.stdout,
    )
    assert match, res.stdout
    assert 0.0 <= float(match.group(1)) <= 1.0
