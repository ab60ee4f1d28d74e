"""`finlora` command line: parse, then call one stage function per subcommand.

User errors (`FinloraError`) print one line and exit with code 2; bugs still raise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import MISSING, fields
from pathlib import Path

from finlora import __version__
from finlora.artifacts import BACKENDS, PRECISIONS
from finlora.config import TrainConfig, field_types, parse_bool, resolve_config
from finlora.errors import (
    INTERRUPTED_EXIT_CODE,
    TERMINATED_EXIT_CODE,
    FinloraError,
    Terminated,
    quiet_half_built_objects,
    sigterm_raises_terminated,
)
from finlora.logs import configure_logging

log = logging.getLogger("finlora")
QUIET_HELP = "only warnings and errors, no progress bars"


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (batch sizes, threads, window sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error takes one path."""

    def error(self, message: str):
        raise FinloraError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per config field; only flags the user types reach the config."""
    kinds = field_types(cls)
    for f in fields(cls):
        kind = kinds[f.name]
        default = f.default if f.default is not MISSING else None
        # argparse %-formats help strings: a literal % (as in "95%") must be doubled
        help_text = f.metadata.get("help", "")
        if default is not None and "default" not in help_text:
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                f"--{f.name}",
                nargs="?",
                const=True,
                type=parse_bool,
                metavar="BOOL",
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{f.name}",
                type=str,
                metavar=f.name.upper(),
                default=argparse.SUPPRESS,
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finlora", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"finlora {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        help="train a classifier and write its artifacts",
        description="Train a LoRA (default) or fully fine-tuned classifier. Precedence: "
        "flags > --config recipe > defaults.",
    )
    train.add_argument("--config", help="YAML recipe (see config/)")
    _add_config_flags(train, TrainConfig)
    train.add_argument(
        "--no_lora",
        dest="use_lora",
        action="store_const",
        const=False,
        default=argparse.SUPPRESS,
        help="full fine-tuning instead of LoRA",
    )
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a saved model on a labelled file")
    evaluate.add_argument("--model", required=True, help="output dir of `finlora train`")
    evaluate.add_argument("--data", required=True, help="labelled file")
    evaluate.add_argument("--text_column", default="text")
    evaluate.add_argument("--label_column", default="label")
    evaluate.add_argument(
        "--label_delimiter", help="multi-label: labels in one string column split by this"
    )
    evaluate.add_argument(
        "--label_columns", help="multi-label: one 0/1 column per label, comma-separated"
    )
    evaluate.add_argument("--batch_size", type=positive_int, default=64)
    evaluate.add_argument("--output", help="write the metrics JSON here")
    evaluate.add_argument("--s3_endpoint_url", help="S3-compatible endpoint for s3:// paths")
    _add_backend_flags(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify texts with a saved model")
    predict.add_argument("--model", required=True, help="output dir of `finlora train`")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--input", help="file of texts (.csv, .tsv, .jsonl, .parquet, .txt)")
    predict.add_argument("--text_column", default="text")
    predict.add_argument("--output", help="write predictions here (.csv, .jsonl, .parquet)")
    predict.add_argument(
        "--document",
        help="classify a whole document (.txt, .xml, .html, .pdf): labelled spans with "
        "character offsets and a summary, as JSON (to --output .json or stdout)",
    )
    predict.add_argument(
        "--segment",
        choices=["sentences", "windows"],
        default="sentences",
        help="--document pieces: sentences (over-long ones in token windows) or token windows",
    )
    predict.add_argument(
        "--window", type=positive_int, help="tokens per window (default: the model's max_length)"
    )
    predict.add_argument(
        "--stride",
        type=positive_int,
        help="tokens between window starts (default: half the window)",
    )
    predict.add_argument("--batch_size", type=positive_int, default=64)
    predict.add_argument(
        "--chunk_rows", type=positive_int, default=4096, help="rows read from --input at a time"
    )
    predict.add_argument("--s3_endpoint_url", help="S3-compatible endpoint for s3:// paths")
    _add_backend_flags(predict)
    predict.set_defaults(handler=cmd_predict)

    export = sub.add_parser(
        "export",
        help="export a trained model to ONNX (optionally int8), verified against PyTorch",
        description="Write <model>/onnx/: the merged model as ONNX with dynamic batch and "
        "sequence axes, tokenizer, labels and export.json. Fails if the export does not "
        "reproduce PyTorch's predictions.",
    )
    export.add_argument("--model", required=True, help="output dir of `finlora train`")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--quantize", choices=["int8"], help="also write an int8 model")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument(
        "--threads", type=positive_int, help="ONNX Runtime threads for verification"
    )
    export.set_defaults(handler=cmd_export)

    serve = sub.add_parser(
        "serve",
        help="serve a trained model over HTTP (FastAPI + uvicorn)",
        description="POST /v1/predict /v1/classify-document, GET /healthz /readyz /v1/model "
        "/metrics. Every option can also be set as an environment variable FINLORA_<OPTION>.",
    )
    serve.add_argument("--model", dest="model_dir", help="output dir of `finlora train`")
    serve.add_argument("--backend", choices=BACKENDS, help="default: onnx when exported")
    serve.add_argument("--precision", choices=PRECISIONS, help="ONNX model (default: int8 if any)")
    serve.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    serve.add_argument("--host", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: 8080")
    serve.add_argument("--max_batch", type=int, help="most texts per request (default: 64)")
    serve.add_argument("--max_body_bytes", type=int, help="request size limit (default: 1 MiB)")
    serve.add_argument(
        "--max_document_chars",
        type=int,
        help="longest /v1/classify-document text (default: 2000000; its body limit is 6 bytes "
        "per character)",
    )
    # API keys come from FINLORA_API_KEYS or this file, never from a flag value (`ps` shows it).
    serve.add_argument("--api_keys_file", help="API keys, one per line (# comments)")
    serve.add_argument("--ssl_certfile", help="TLS certificate (PEM); needs --ssl_keyfile")
    serve.add_argument("--ssl_keyfile", help="TLS private key (PEM)")
    serve.add_argument("--max_queue_texts", type=int, help="queue bound, 503 past it (512)")
    serve.add_argument("--request_timeout_s", type=float, help="queue deadline, 503 past it (5)")
    serve.add_argument("--graceful_timeout_s", type=float, help="SIGTERM grace period (10)")
    serve.set_defaults(handler=cmd_serve)

    from finlora.compare import CompareConfig
    from finlora.profile import ProfileConfig

    compare = sub.add_parser(
        "compare",
        help="full fine-tuning vs LoRA vs TF-IDF baseline on the same split(s): report + plots",
        description="Train each strategy on the same de-duplicated split (or the same stratified "
        "folds) with its own recipe; write report.md, report.json and PNG plots. Rerunning with "
        "the same --output_dir skips finished runs.",
    )
    _add_config_flags(compare, CompareConfig)
    compare.set_defaults(handler=cmd_compare)

    profile = sub.add_parser(
        "profile",
        help="profile a labelled dataset: classes, lengths, duplicates, frequent tokens",
        description="Write profile.md, profile.json and PNG plots describing a dataset.",
    )
    _add_config_flags(profile, ProfileConfig)
    profile.set_defaults(handler=cmd_profile)

    sagemaker = sub.add_parser("sagemaker", help="run training as a SageMaker job")
    sagemaker_sub = sagemaker.add_subparsers(dest="action", required=True, parser_class=_Parser)
    launch = sagemaker_sub.add_parser(
        "launch",
        help="create a SageMaker training job running `finlora train`",
        description="Create a SageMaker training job with the finlora image. Training settings "
        "come from --config and from `finlora train` flags after `--`, e.g. "
        "`finlora sagemaker launch ... -- --epochs 3 --no_lora`.",
    )
    launch.add_argument("--s3_data", required=True, help="s3:// prefix or file: the train channel")
    launch.add_argument("--s3_validation", help="s3:// prefix or file: the validation channel")
    launch.add_argument("--s3_test", help="s3:// prefix or file: the test channel")
    launch.add_argument("--role", required=True, help="IAM role ARN SageMaker runs the job as")
    launch.add_argument("--image_uri", required=True, help="ECR image built from our Dockerfile")
    launch.add_argument("--instance_type", default="ml.g4dn.xlarge")
    launch.add_argument("--instance_count", type=int, default=1)
    launch.add_argument("--volume_gb", type=int, default=30, help="EBS volume per instance")
    launch.add_argument(
        "--output_s3",
        help="where SageMaker writes model.tar.gz (default: s3://BUCKET/finlora/jobs)",
    )
    launch.add_argument("--job_name", help="default: finlora-YYYYmmdd-HHMMSS")
    launch.add_argument("--max_run", type=int, default=24 * 3600, help="seconds of training")
    launch.add_argument("--spot", action="store_true", help="managed spot training (cheaper)")
    launch.add_argument("--max_wait", type=int, help="spot: seconds incl. waiting (2x max_run)")
    launch.add_argument(
        "--checkpoint_s3", help="checkpoint sync target (--spot default: OUTPUT/JOB/checkpoints)"
    )
    launch.add_argument("--config", help="YAML recipe; its settings become hyperparameters")
    launch.add_argument("--region", help="AWS region (default: the standard chain)")
    launch.add_argument("--endpoint_url", help="SageMaker API endpoint override (testing)")
    launch.add_argument("--dry_run", action="store_true", help="print the request, do not submit")
    launch.add_argument(
        "train_flags", nargs=argparse.REMAINDER, help="-- then `finlora train` flags"
    )
    launch.set_defaults(handler=cmd_sagemaker_launch)
    commands = [*sub.choices.values(), *sagemaker_sub.choices.values()]
    for command in commands:  # `finlora train -q` as well as `finlora -q train`
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
    return parser


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="default: onnx when exported"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="ONNX model (int8 if exported)"
    )
    parser.add_argument(
        "--threads", type=positive_int, help="inference threads (default: all cores)"
    )


def _load_predictor(args: argparse.Namespace, model: str | None = None):
    from finlora.predictor import Predictor

    return Predictor.load(
        model or args.model,
        batch_size=args.batch_size,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
    )


def _flags(args: argparse.Namespace) -> dict:
    """The settings the user typed (argparse suppresses the others)."""
    return {
        k: v for k, v in vars(args).items() if k not in {"command", "handler", "config", "quiet"}
    }


def fetch(path: str | None, folder: Path, endpoint_url: str | None, directory: bool = False):
    """A local path for `path`: itself, or a download of an s3:// file or prefix."""
    if not (path or "").startswith("s3://"):
        return path
    from finlora.cloud import s3

    if directory:
        return str(s3.download_dir(path, folder / "model", endpoint_url))
    return str(s3.download_file(path, folder / "input", endpoint_url))


def cmd_train(args: argparse.Namespace) -> int:
    from finlora.cloud import sagemaker

    overrides = _flags(args)
    config_path = args.config
    container = sagemaker.detect()
    if container is not None:  # typed flags win over hyperparameters.json
        hyperparameters = sagemaker.hyperparameters(container)
        config_path = config_path or hyperparameters.pop("config", None)
        unknown = sorted(set(hyperparameters) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise FinloraError(
                f"unknown hyperparameter(s) {', '.join(unknown)}; use `finlora train` flag names"
            )
        overrides = {**hyperparameters, **overrides}
    config = resolve_config(overrides, config_path)
    from finlora.cloud.run import run_train  # torch and transformers: only once settings hold

    results, config = run_train(config)
    if results is None:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    summary = {k: results[k] for k in ("strategy", "trainable_fraction", "train_seconds")}
    test = results["test"]
    if test:
        summary["test_macro_f1"] = round(test["macro_f1"], 4)
        second = "micro_f1" if results["task"] == "multi_label" else "accuracy"
        summary[f"test_{second}"] = round(test[second], 4)
    if "mlflow" in results:
        summary["mlflow"] = results["mlflow"]
    print(json.dumps({"output_dir": config.output_dir, **summary}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from finlora.artifacts import check_output_file, write_json
    from finlora.data.prepare import multi_hot
    from finlora.data.sources import as_label_list, read_labelled
    from finlora.data.validate import check_known_labels, clean
    from finlora.evaluation import (
        classification_report,
        format_multilabel_report,
        format_report,
        multilabel_report,
    )

    if args.output and not args.output.startswith("s3://"):
        check_output_file(args.output)
    with tempfile.TemporaryDirectory(prefix="finlora-evaluate-") as tmp:
        endpoint = args.s3_endpoint_url
        model = fetch(args.model, Path(tmp), endpoint, directory=True)
        data = fetch(args.data, Path(tmp), endpoint)
        predictor = _load_predictor(args, model)
        raw = read_labelled(
            data,
            args.text_column,
            args.label_column,
            label_delimiter=args.label_delimiter,
            label_columns=args.label_columns.split(",") if args.label_columns else None,
        )
        if predictor.multi_label and not isinstance(raw["label"].iloc[0], list):
            raw["label"] = raw["label"].map(as_label_list)
        frame, _ = clean(raw, args.data)
        check_known_labels(
            frame, predictor.labels, args.data, fix="evaluate a model trained on them"
        )
        if predictor.multi_label:
            block = multilabel_report(
                multi_hot(frame["label"], predictor.labels),
                predictor.predict_label_matrix(frame["text"]),
                predictor.labels,
                predictor.thresholds,
            )
            log.info("\n%s", format_multilabel_report(block, Path(data).name))
        else:
            index = {name: i for i, name in enumerate(predictor.labels)}
            block = classification_report(
                [index[lab] for lab in frame["label"]],
                predictor.predict_ids(frame["text"]),
                predictor.labels,
            )
            log.info("\n%s", format_report(block, Path(data).name))
        if args.output:
            output = Path(tmp) / "metrics.json" if args.output.startswith("s3://") else args.output
            write_json(output, block)
            if output != args.output:
                from finlora.cloud.s3 import upload_file

                upload_file(output, args.output, endpoint)
    print(json.dumps(block))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from finlora.artifacts import check_output_file
    from finlora.predict_io import check_prediction_output, predict_file

    if sum(map(bool, (args.texts, args.input, args.document))) != 1:
        raise FinloraError(
            "give texts to classify or --input FILE or --document FILE (one of them)"
        )
    if args.output and args.texts:
        raise FinloraError(
            "--output goes with --input FILE or --document FILE; predictions for texts given "
            "on the command line are printed (one JSON line each)"
        )
    remote_output = (args.output or "").startswith("s3://")
    if args.output and args.document:
        if not args.output.endswith(".json"):
            raise FinloraError(f"--output {args.output}: a --document result is written as .json")
        if not remote_output:
            check_output_file(args.output)
    elif args.output:
        check_prediction_output(args.output)
    with tempfile.TemporaryDirectory(prefix="finlora-predict-") as tmp:
        endpoint = args.s3_endpoint_url
        predictor = _load_predictor(args, fetch(args.model, Path(tmp), endpoint, directory=True))
        if args.texts:
            for record in predictor.predict(args.texts):
                print(json.dumps(record))
            return 0
        output = args.output
        if remote_output:  # written locally, uploaded when complete
            output = str(Path(tmp) / "output" / output.rsplit("/", 1)[-1])
            Path(output).parent.mkdir()
        if args.document:
            predict_document(predictor, args, output)
        else:
            source = fetch(args.input, Path(tmp), endpoint)
            predict_file(predictor, source, args.text_column, output, args.chunk_rows)
        if remote_output:
            from finlora.cloud.s3 import upload_file

            upload_file(output, args.output, endpoint)
    return 0


def cmd_sagemaker_launch(args: argparse.Namespace) -> int:
    from finlora.cloud import sagemaker
    from finlora.cloud.s3 import S3Uri

    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    overrides = _flags(build_parser().parse_args(["train", *flags]))
    config = resolve_config(overrides, args.config)
    job = args.job_name or sagemaker.job_name()
    output_s3 = args.output_s3 or f"s3://{S3Uri.parse(args.s3_data).bucket}/finlora/jobs"
    request = sagemaker.training_job_request(
        job=job,
        image_uri=args.image_uri,
        role_arn=args.role,
        s3_data=args.s3_data,
        s3_validation=args.s3_validation,
        s3_test=args.s3_test,
        output_s3=output_s3,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_gb=args.volume_gb,
        max_run=args.max_run,
        spot=args.spot,
        max_wait=args.max_wait,
        checkpoint_s3=args.checkpoint_s3,
        hyperparameters=sagemaker.hyperparameters_from(config, overrides),
    )
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    arn = sagemaker.submit(request, args.region, args.endpoint_url)
    print(json.dumps({"TrainingJobName": job, "TrainingJobArn": arn}))
    return 0


def predict_document(predictor, args: argparse.Namespace, output: str | None) -> None:
    """Classify `--document` piece by piece; the JSON result goes to `output` or stdout."""
    from finlora.artifacts import write_json
    from finlora.documents import classify_document, read_document

    result = classify_document(
        predictor,
        read_document(args.document),
        segment_by=args.segment,
        window=args.window,
        stride=args.stride,
    )
    result = {"document": str(args.document), **result}
    summary = {k: v["count"] for k, v in result["summary"]["per_label"].items() if v["count"]}
    log.info("%s: %d pieces, labelled %s", args.document, result["pieces"], summary or "none")
    if output:
        write_json(output, result)
    else:
        print(json.dumps(result))


def cmd_export(args: argparse.Namespace) -> int:
    from finlora.export import export_onnx

    info = export_onnx(args.model, quantize=args.quantize, opset=args.opset, threads=args.threads)
    print(
        json.dumps(
            {
                "output_dir": str(Path(args.model) / "onnx"),
                "files": {name: f["bytes"] for name, f in info["files"].items()},
                "parity": info["parity"],
            }
        )
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from finlora.compare import CompareConfig, compare

    settings = resolve_config(_flags(args), None, CompareConfig)
    report = compare(settings)
    summary = {
        name: {
            key: round(s[key], 4)
            for key in ("macro_f1", "accuracy", "trainable_percent", "train_seconds")
        }
        for name, s in report["strategies"].items()
    }
    print(json.dumps({"output_dir": settings.output_dir, "strategies": summary}))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from finlora.profile import ProfileConfig, profile

    settings = resolve_config(_flags(args), None, ProfileConfig)
    result = profile(settings)
    print(
        json.dumps(
            {
                "output_dir": settings.output_dir,
                "rows": result["rows_kept"],
                "class_counts": result["class_counts"],
                "imbalance_ratio": result["imbalance_ratio"],
                "truncated_share": result["token_lengths"]["truncated_share"],
            }
        )
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from finlora.serve.app import run

    options = {k: v for k, v in vars(args).items() if k not in {"command", "handler", "quiet"}}
    run({k: v for k, v in options.items() if v is not None})
    return 0


def setup_logging(quiet: bool) -> None:
    # Under torchrun every rank logs; only rank 0 tells the story, the others warn and fail.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    configure_logging(
        logging.WARNING if quiet else logging.INFO,
        "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
            raise FinloraError(
                f"unrecognized argument(s) {' '.join(unknown)} (see `finlora {command} --help`)"
            )
        setup_logging(args.quiet)
        if args.handler is cmd_serve:  # uvicorn handles SIGTERM itself: a graceful shutdown
            return args.handler(args)
        with sigterm_raises_terminated():
            return args.handler(args)
    except FinloraError as exc:
        report_failure(str(exc))
        print(f"finlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        quiet_half_built_objects()
        print("finlora: interrupted; no half-written output was left", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except Terminated:
        quiet_half_built_objects()
        report_failure("terminated by SIGTERM")
        print("finlora: terminated (SIGTERM); no half-written output was left", file=sys.stderr)
        return TERMINATED_EXIT_CODE
    except Exception as exc:
        report_failure(f"{type(exc).__name__}: {exc}")
        raise


def report_failure(message: str) -> None:
    """In a SageMaker container, leave the reason where the job status shows it."""
    from finlora.cloud.sagemaker import report_failure as write_failure

    write_failure(message)


if __name__ == "__main__":
    raise SystemExit(main())
