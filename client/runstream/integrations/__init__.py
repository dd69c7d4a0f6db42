"""Framework integrations: log what a training library already knows into a Runstream run.

Each module imports its framework when it is imported itself, never from `import runstream`, so
the bare SDK stays light; install the framework with the matching extra:

    runstream.integrations.sklearn    pip install "runstream[sklearn]"    params, metrics, search results
    runstream.integrations.xgboost    pip install "runstream[xgboost]"    xgboost TrainingCallback
    runstream.integrations.lightgbm   pip install "runstream[lightgbm]"   lightgbm callback
    runstream.integrations.optuna     pip install "runstream[optuna]"     one run per trial, study = group
    runstream.integrations.keras      pip install "runstream[keras]"      Keras 3 callback (any backend)
    runstream.integrations.lightning  pip install "runstream[lightning]"  PyTorch Lightning logger
    runstream.integrations.transformers  pip install "runstream[transformers]"  HF Trainer callback,
                                      report_to="runstream" after register_report_to()

`pip install "runstream[integrations]"` installs all of them. Examples: client/examples/.
"""
