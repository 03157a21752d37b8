"""MLflow: where runs go, what a training run logs, the generator as a model, the registry.

One MLflow run per training run (a run directory under ``runs/train/``): params flattened,
per-tick metrics with the number of images shown as the step (so curves of runs with other
batch sizes line up), the snapshot grids as images with that step (the UI's step slider),
system metrics (CPU, memory, GPU where there is one), the prepared dataset as an MLflow
dataset (digest: its DVC hash; contexts ``training`` and ``evaluation``), tags tying the run to
the git commit, and later the evaluation metrics, linked to the logged model and the dataset.
Stages are not nested runs: ``resolution`` and ``stage`` are metrics, so one chart shows the
whole progression. A run whose process died without a word (SIGKILL, OOM) is found by its
``pokegan.host``/``pokegan.pid`` tags and marked KILLED by the next training.

One module per concern; import the one you need (this package imports none of them, so a stage
loads, and dvc.yaml lists as its deps, only the modules it runs):

- ``store``: the tracking/registry URI (``default_tracking_uri``, ``setup``), ``EXPERIMENT``, ``ensure_experiment``.
- ``provenance``: params (``flatten``, ``log_params``) and the tags tying a run to its code and data
  (``git_commit``, ``dvc_out_hash``, ``source_tags``).
- ``datasets``: the prepared data as an MLflow dataset (``dvc_tree_hash``, ``NpmPackageDatasetSource``,
  ``prepared_dataset``, ``log_dataset``).
- ``runs``: a run's owner process (``claim_run``, the ``pokegan.*`` tags), ``reap_dead_runs``,
  ``end_runs_of_flow_run``, the ``system_metrics`` monitor.
- ``callback``: ``MlflowTrainingCallback`` (the trainer's per-tick logging) and ``TrackingUnavailable``.
- ``logged_model``: the generator as a pyfunc model (``log_generator_model``, ``model_signature``,
  ``input_example``, ``PYFUNC_CODE``, ``PIP_REQUIREMENTS`` from ``served_requirements``: pyproject.toml's pins as
  the installed metadata lists them), ``log_model_metrics``, ``model_id_of``.
- ``registry``: ``register``, ``resolve_version`` / ``parse_model_uri``, ``RegistryError``, the champion rule
  (``apply_champion_rule``, ``champion_value``, ``Decision``).

The logged model is defined by code (``flows/pyfunc_model.py`` is copied into it; ``stylegan/``
travels as code_paths): no saved model names a module of this package, so moving names between
these modules never breaks loading a registered model.
"""
