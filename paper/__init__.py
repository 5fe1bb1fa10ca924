"""The paper's report: the top layer, above the sweeps (`tune`), the pipeline stages
(`pipelines`) and the library (`missiwae`); nothing below imports it.

    python -m paper.report --config tiny|cpu|paper   the whole report through Ray and MLflow
    python -m paper.gpu run|render|proposal          time-boxed on one GPU with the library alone

Modules: `verdicts` (the claims, judged from numbers), `render` (the cluster report's README
and figure), `report` (runs it), `gpu_specs` / `gpu` / `gpu_render` (the single-GPU run: what
it trains, running it, its README). Generated reports live in reports/.
"""
