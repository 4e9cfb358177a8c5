"""The agents: one module per pipeline stage, each exposing ``run(params, paths) -> report``.

Agents talk only through the artifacts in :class:`crowdforge.paths.Paths` and the reports under
``reports/``; no agent imports another agent. ``crowdforge.stages`` declares each stage's deps,
outs and params for both drivers (Prefect and DVC).
"""
