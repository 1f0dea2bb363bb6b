"""A class that arrives on night 2 (emotion, "fear" absent on night 1): what night 2's teacher learns of it.

    nice -n 10 python bench/new_class.py [--night1 2000] [--night2 1000] [--max-length 64] [--epochs E] [--warm]

Night 1: the first ``--night1`` emotion train rows that are not "fear", fine-tuned from MiniLM (the shipped emotion
spec: 3 epochs at 3e-4), published by hand as the champion (a version manifest naming its snapshot, whose
label_counts have no "fear"). Night 2: those rows plus the next ``--night2`` train rows, "fear" included, with the
shipped spec's ``train.init_from: champion`` and ``warm_start_epochs: 1``: the fine-tune stage sees the class
the champion never saw and starts from the base model (tasks/train/fresh_start.py). Both teachers are scored on
the emotion test split (the spec's golden set, 2,000 rows, 224 "fear"): recall of "fear", macro-F1, and the
non-inferiority gate of night 2 against night 1 as evaluate applies it (``gates.sized_non_inferiority_gate``, the
spec's gates). ``--warm`` also runs night 2 with the new-class check turned off in this process (the 1-epoch warm
start the code made before; the collapse retry stays on) for comparison. Real stages in this process, file://
storage. Prints one JSON line (after the stages' own log lines).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, ROOT, print_json, write_snapshot  # noqa: E402

SPEC = ROOT / "include" / "pipelines" / "emotion.yaml"


def read_emotion(split: str) -> list[tuple[str, str]]:
    with open(DATA / "emotion" / f"{split}.txt", newline="", encoding="utf-8") as fh:
        return [(row["text"], row["label_name"]) for row in csv.DictReader(fh, delimiter=";")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--night1", type=int, default=2000)
    ap.add_argument("--night2", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=None, help="train.epochs of both nights (default: the spec's 3)")
    ap.add_argument("--warm", action="store_true", help="also night 2 with the new-class check off")
    args = ap.parse_args(argv)

    import numpy as np

    from tasks import metrics, storage
    from tasks.decide import gates
    from tasks.spec import dump, load_spec, with_overrides
    from tasks.train import finetune, fresh_start
    from tasks.train.modeling import predict_proba

    train = read_emotion("train")
    night1 = [r for r in train if r[1] != "fear"][:args.night1]
    # Night 2 adds the train rows after night 1's last, "fear" included (earlier "fear" rows are in neither).
    night2 = night1 + train[train.index(night1[-1]) + 1:][:args.night2]
    golden = read_emotion("test")
    out: dict = {"night1_rows": len(night1), "night2_rows": len(night2),
                 "night2_fear_rows": sum(1 for _, y in night2 if y == "fear"), "golden_rows": len(golden),
                 "golden_fear_rows": sum(1 for _, y in golden if y == "fear")}

    with tempfile.TemporaryDirectory(prefix="bench-new-class-") as tmp:
        root = storage.normalize(tmp)
        os.environ["RETRAIN_STORAGE_URI"] = root
        os.environ["RETRAIN_SCRATCH_DIR"] = str(Path(tmp) / "scratch")
        spec = with_overrides(load_spec(SPEC), {"model.max_length": args.max_length, "train.checkpoint_steps": 1000,
                                                **({"train.epochs": args.epochs} if args.epochs else {})})
        labels = spec.data.labels
        ids = {name: i for i, name in enumerate(labels)}
        y_golden = np.array([ids[y] for _, y in golden])

        def snapshot(rows):
            uri = write_snapshot(root, spec.name, [(t, ids[y]) for t, y in rows])
            manifest = storage.read_json(storage.join(uri, "manifest.json"))
            counts = {name: sum(1 for _, y in rows if y == name) for name in labels}
            storage.write_json(storage.join(uri, "manifest.json"), {**manifest, "label_counts": counts})
            return uri

        def night(key, snap, champion=None):
            run = spec.layout.run(key)
            storage.write_json(storage.join(run, "spec.json"), dump(spec))
            started = time.monotonic()
            finetune.main(["--run", run, "--snapshot", snap] + (["--champion", champion] if champion else []))
            result = storage.read_json(storage.join(run, "finetune", "result.json"))
            pred = predict_proba(storage.local_path(result["model_uri"]), [t for t, _ in golden],
                                 max_length=args.max_length).argmax(axis=1)
            recall = metrics.per_class(y_golden, pred, len(labels))["recall"]
            return pred, {"init_from": result["init_from"], "epochs": result["epochs"],
                          "fresh_start": result.get("fresh_start"),
                          "fear_recall_golden": round(float(recall[ids["fear"]]), 4),
                          "macro_f1_golden": round(metrics.macro_f1(y_golden, pred, len(labels)), 4),
                          "accuracy_golden": round(metrics.accuracy(y_golden, pred), 4),
                          "seconds": round(time.monotonic() - started, 1)}, result

        snap1, snap2 = snapshot(night1), snapshot(night2)
        pred1, out["night1"], result1 = night("night1", snap1)
        champion = spec.layout.version("v1")
        storage.upload_dir(storage.local_path(result1["model_uri"]), storage.join(champion, "teacher"))
        storage.write_json(storage.join(champion, "manifest.json"), {"version": "v1", "snapshot_uri": snap1})

        def verdict(pred):
            gate = gates.sized_non_inferiority_gate("non_inferiority_teacher", pred == y_golden, pred1 == y_golden,
                                                    spec.gates)
            return {"passed": gate.passed, "reason": gate.reason}

        pred2, out["night2"], _ = night("night2", snap2, champion)
        out["night2"]["non_inferiority"] = verdict(pred2)
        if args.warm:
            fresh_start.unseen_classes = lambda *a, **k: []  # the warm start as before this change
            pred_w, out["night2_warm_forced"], _ = night("night2-warm", snap2, champion)
            out["night2_warm_forced"]["non_inferiority"] = verdict(pred_w)
    print_json(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
