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
from finlora.config import TrainConfig, field_types, parse_bool, resolve_config
from finlora.errors import FinloraError

log = logging.getLogger("finlora")


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
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
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
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
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
    evaluate.add_argument("--batch_size", type=int, default=64)
    evaluate.add_argument("--output", help="write the metrics JSON here")
    evaluate.add_argument("--s3_endpoint_url", help="S3-compatible endpoint for s3:// paths")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify texts with a saved model")
    predict.add_argument("--model", required=True, help="output dir of `finlora train`")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--input", help="file of texts (.csv, .tsv, .jsonl, .parquet, .txt)")
    predict.add_argument("--text_column", default="text")
    predict.add_argument("--output", help="write predictions here (.csv, .jsonl, .parquet)")
    predict.add_argument("--batch_size", type=int, default=64)
    predict.add_argument("--s3_endpoint_url", help="S3-compatible endpoint for s3:// paths")
    predict.set_defaults(handler=cmd_predict)

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
    return parser


def train_overrides(args: argparse.Namespace) -> dict:
    """The `finlora train` flags the user actually typed."""
    skip = {"command", "handler", "config", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip}


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
    from finlora.cloud.run import run_train

    overrides = train_overrides(args)
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
    results, config = run_train(config)
    summary = {k: results[k] for k in ("strategy", "trainable_fraction", "train_seconds")}
    if results["test"]:
        summary.update(
            test_macro_f1=round(results["test"]["macro_f1"], 4),
            test_accuracy=round(results["test"]["accuracy"], 4),
        )
    if "mlflow" in results:
        summary["mlflow"] = results["mlflow"]
    print(json.dumps({"output_dir": config.output_dir, **summary}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from finlora.artifacts import write_json
    from finlora.data.sources import read_labelled
    from finlora.data.validate import check_known_labels, clean
    from finlora.evaluation import classification_report, format_report
    from finlora.predictor import Predictor

    with tempfile.TemporaryDirectory(prefix="finlora-evaluate-") as tmp:
        endpoint = args.s3_endpoint_url
        model = fetch(args.model, Path(tmp), endpoint, directory=True)
        data = fetch(args.data, Path(tmp), endpoint)
        predictor = Predictor.load(model, batch_size=args.batch_size)
        frame, _ = clean(read_labelled(data, args.text_column, args.label_column), args.data)
        check_known_labels(frame, predictor.labels, args.data)
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
    from finlora.predict_io import predict_file
    from finlora.predictor import Predictor

    if bool(args.texts) == bool(args.input):
        raise FinloraError("give texts to classify or --input FILE (one of the two)")
    with tempfile.TemporaryDirectory(prefix="finlora-predict-") as tmp:
        endpoint = args.s3_endpoint_url
        model = fetch(args.model, Path(tmp), endpoint, directory=True)
        predictor = Predictor.load(model, batch_size=args.batch_size)
        if not args.input:
            for record in predictor.predict(args.texts):
                print(json.dumps(record))
            return 0
        output = args.output
        if (output or "").startswith("s3://"):
            output = str(Path(tmp) / "output" / output.rsplit("/", 1)[-1])
        predict_file(predictor, fetch(args.input, Path(tmp), endpoint), args.text_column, output)
        if output != args.output:
            from finlora.cloud.s3 import upload_file

            upload_file(output, args.output, endpoint)
    return 0


def cmd_sagemaker_launch(args: argparse.Namespace) -> int:
    from finlora.cloud import sagemaker
    from finlora.cloud.s3 import S3Uri

    flags = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    overrides = train_overrides(build_parser().parse_args(["train", *flags]))
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


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("transformers", "peft", "accelerate", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        setup_logging(args.quiet)
        return args.handler(args)
    except FinloraError as exc:
        report_failure(str(exc))
        print(f"finlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finlora: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as exc:
        report_failure(f"{type(exc).__name__}: {exc}")
        raise


def report_failure(message: str) -> None:
    """In a SageMaker container, leave the reason where the job status shows it."""
    from finlora.cloud.sagemaker import report_failure as write_failure

    write_failure(message)


if __name__ == "__main__":
    raise SystemExit(main())
