"""Package-level rules: the library never pulls in the pipeline's heavy dependencies."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_missiwae_imports_no_ray_mlflow_or_pyarrow():
    code = (
        "import json, sys, missiwae, missiwae.cli, missiwae.estimator, missiwae.data; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(output.stdout))
    assert "torch" in loaded  # the check itself works
    assert not loaded & {"ray", "mlflow", "pyarrow"}


def test_pipeline_dependencies_are_installed_so_the_import_check_can_fail():
    # The check above would pass vacuously if these were absent; CI installs them.
    import importlib.util

    for name in ("ray", "mlflow", "pyarrow"):
        assert importlib.util.find_spec(name) is not None, name
