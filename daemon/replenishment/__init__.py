"""The replenishment job: gather stock and norms, plan, record the plan, enqueue its documents.

``planner`` (pure) decides from ``inputs``' gathered facts, ``plan`` holds what it decided and
``reasons`` words each decision; ``runs`` starts one run per job at a time and ``run_job`` is a
run's work.
"""
