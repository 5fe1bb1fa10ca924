"""Package-level rules: the library never needs the pipeline's heavy dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PIPELINE_PACKAGES = ("ray", "mlflow", "pyarrow")


def _run(code: str) -> str:
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_import_missiwae_imports_no_ray_mlflow_or_pyarrow():
    output = _run(
        """
        import json, sys
        import missiwae, missiwae.cli, missiwae.data, missiwae.training, missiwae.imputation
        import missiwae.evaluation, missiwae.classifier
        print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
        """
    )
    loaded = set(json.loads(output))
    assert "torch" in loaded  # the check itself sees imports
    assert not loaded & set(PIPELINE_PACKAGES)


def test_the_whole_library_works_with_pipeline_packages_absent():
    # scikit-learn imports pandas, which imports pyarrow when present: so the sklearn-based
    # modules are checked by hiding ray/mlflow/pyarrow outright and using them.
    output = _run(
        f"""
        import importlib.abc, sys

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {PIPELINE_PACKAGES!r}:
                    raise ImportError(f"{{name}} is hidden for this test")
                return None

        sys.meta_path.insert(0, Hide())
        import numpy as np
        import missiwae
        from missiwae import MissIWAEImputer
        import missiwae.missforest, missiwae.classifier, missiwae.cli

        x = np.random.default_rng(0).normal(size=(40, 3))
        x[::3, 1] = np.nan
        completed = MissIWAEImputer(epochs=2, num_samples=5, random_state=0).fit_transform(x)
        assert not np.isnan(completed).any()
        print(sorted({{m.split('.')[0] for m in sys.modules}} & set({PIPELINE_PACKAGES!r})))
        """
    )
    assert output.strip() == "[]"


def test_pipeline_dependencies_are_installed_so_the_import_check_can_fail():
    # The first check would pass vacuously if these were absent; CI installs them.
    import importlib.util

    for name in PIPELINE_PACKAGES:
        assert importlib.util.find_spec(name) is not None, name
