"""Logs real MLflow data for the importer tests; runs inside MLflow's virtualenv (standard library
and mlflow only: it cannot import anything from this repository).

    python mlflow_writer.py TRACKING_URI OUT.json [--runs N] [--steps S]

Logs into two experiments: runs with params, tags, metrics with explicit steps (one with a NaN),
a metric logged without a step, a FAILED run, artifacts (a "model" folder with a 1.5 MiB file, so
the importer's upload path is used, and a text file), and a registered model "clf" with two versions
made from a run's "model" folder and a third from an MLflow 3 logged model "net" of that run,
aliases "champion" -> version 1, "candidate" -> version 3. Writes what it logged, as MLflow
reports it back (run ids, every metric point, artifact digests), to OUT.json: the tests compare
what landed in Runstream against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    mlflow.set_tracking_uri(args.uri)
    client = MlflowClient()
    work = tempfile.mkdtemp(prefix="mlflow-writer-", dir=os.path.dirname(os.path.abspath(args.out)))
    experiments = {}
    for name in ("vision exp", "nlp/base"):
        location = None
        if not args.uri.startswith("http"):  # local stores: artifacts next to the data, not in cwd
            location = "file://" + os.path.join(work, "artifacts", name.replace("/", "_").replace(" ", "_"))
        experiments[name] = client.create_experiment(name, artifact_location=location)
    truth = {"runs": {}, "model_run": None}
    for i in range(args.runs):
        exp_name = "vision exp" if i % 2 == 0 else "nlp/base"
        status = "FAILED" if i == 1 else "FINISHED"
        run = client.create_run(
            experiments[exp_name], run_name=f"run-{i}", tags={"team": "cv", "idx": str(i)}
        )
        rid = run.info.run_id
        client.log_batch(rid, params=[mlflow.entities.Param("lr", str(0.01 * (i + 1))),
                                       mlflow.entities.Param("optimizer", "adam"),
                                       mlflow.entities.Param("layers", str(2 + i))])  # fmt: skip
        t0 = 1_700_000_000_000 + i * 10_000_000
        points = []
        for step in range(args.steps):
            points.append(Metric("loss", 1.0 / (step + 1) + i, t0 + step * 10, step))
            points.append(
                Metric("acc", float("nan") if step == 3 else step / args.steps, t0 + step * 10 + 1, step)
            )
        for k in range(0, len(points), 1000):
            client.log_batch(rid, metrics=points[k : k + 1000])
        for j in range(3):  # no step given: MLflow stores step 0 for each
            client.log_metric(rid, "epoch_time", 10.0 + j, timestamp=t0 + j)
        folder = os.path.join(work, f"model-{i}")
        os.makedirs(folder)
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.write(hashlib.sha256(rid.encode()).digest() * (3 * 16384 + i))  # ~1.5 MiB
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"run": i}, f)
        client.log_artifacts(rid, folder, "model")
        client.log_text(rid, f"notes of run {i}\n", "notes.txt")
        net_files = {}
        if i == 0:  # an MLflow 3 logged model: files kept apart from the run's artifacts
            logged = client.create_logged_model(experiments[exp_name], name="net", source_run_id=rid)
            net = os.path.join(work, "net")
            os.makedirs(os.path.join(net, "data"))
            for rel, blob in (("MLmodel", b"flavors: {}\n"), ("data/params.bin", bytes(range(256)) * 64)):
                with open(os.path.join(net, rel), "wb") as f:
                    f.write(blob)
                net_files[f"net/{rel}"] = hashlib.sha256(blob).hexdigest()
            client.log_model_artifacts(logged.model_id, net)
            client.finalize_logged_model(logged.model_id, "READY")
            truth["logged_model"] = logged.model_id
        client.set_terminated(rid, status, end_time=t0 + 50_000)
        history = {}
        for key in ("loss", "acc", "epoch_time"):
            history[key] = [
                [m.step, m.timestamp, None if math.isnan(m.value) else m.value]
                for m in client.get_metric_history(rid, key)
            ]
        files = {}
        for folder_name, root in (("model", folder),):
            for fname in sorted(os.listdir(root)):
                with open(os.path.join(root, fname), "rb") as f:
                    files[f"{folder_name}/{fname}"] = hashlib.sha256(f.read()).hexdigest()
        files["notes.txt/notes.txt"] = hashlib.sha256(f"notes of run {i}\n".encode()).hexdigest()
        files.update(net_files)
        info = client.get_run(rid).info
        truth["runs"][rid] = {
            "name": f"run-{i}", "experiment": exp_name, "status": status,
            "params": {"lr": 0.01 * (i + 1), "optimizer": "adam", "layers": 2 + i},
            "tags": {"team": "cv", "idx": str(i)}, "history": history, "files": files,
            "start_ms": info.start_time, "end_ms": info.end_time, "artifact_uri": info.artifact_uri,
        }  # fmt: skip
        if i == 0:
            truth["model_run"] = rid
    rid = truth["model_run"]
    source = truth["runs"][rid]["artifact_uri"] + "/model"
    client.create_registered_model("clf", description="a classifier")
    v1 = client.create_model_version("clf", source, run_id=rid, description="first")
    client.create_model_version("clf", source, run_id=rid, description="second")
    v3 = client.create_model_version(
        "clf", f"models:/{truth['logged_model']}", run_id=rid, model_id=truth["logged_model"],
        description="from a logged model",
    )  # fmt: skip
    client.set_registered_model_alias("clf", "champion", v1.version)
    client.set_registered_model_alias("clf", "candidate", v3.version)
    with open(args.out, "w") as f:
        json.dump(truth, f)


if __name__ == "__main__":
    main()
