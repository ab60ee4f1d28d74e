"""`finlora` command line: parse, then call one stage function per subcommand.

Each subcommand is a function over one settings class, and its flags are generated from that
class (`finlora.flags`), so a setting, its help and its default are written once. User
errors (`FinloraError`) print one line and exit with code 2; bugs still raise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from finlora import __version__
from finlora.artifacts import BACKENDS, PRECISIONS
from finlora.config import GROUP_TITLES, TrainConfig, resolve_config
from finlora.errors import (
    INTERRUPTED_EXIT_CODE,
    TERMINATED_EXIT_CODE,
    FinloraError,
    Terminated,
    quiet_half_built_objects,
    sigterm_raises_terminated,
)
from finlora.flags import add_flags, positive_int, settings_flags
from finlora.logs import configure_logging

log = logging.getLogger("finlora")
QUIET_HELP = "only warnings and errors, no progress bars or library warnings"

__all__ = ["build_parser", "main", "positive_int"]


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _req(help: str, **kw: Any) -> Any:
    """A required setting: a flag without a default."""
    return field(metadata={"help": help, **kw})


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error takes one path."""

    def error(self, message: str):
        raise FinloraError(f"{self.prog}: {message} (see `{self.prog} --help`)")


class _SubParsers(argparse._SubParsersAction):
    """Subcommands whose flags are generated when the subcommand is chosen: `finlora train`
    does not import what `finlora serve`'s settings need (pydantic)."""

    def __call__(self, parser, namespace, values, option_string=None):
        populate(self._name_parser_map.get(values[0]))
        super().__call__(parser, namespace, values, option_string)


_INTERNAL = {"command", "action", "handler", "quiet", "_settings"}


@dataclass(kw_only=True)
class BackendSettings:
    """How a saved model runs (shared by evaluate and predict)."""

    batch_size: int = _opt(64, "texts per inference batch", type=positive_int)
    s3_endpoint_url: str | None = _opt(None, "S3-compatible endpoint for s3:// paths")
    backend: str = _opt("auto", "auto: onnx when exported", choices=BACKENDS)
    precision: str = _opt("auto", "ONNX model (auto: int8 if exported)", choices=PRECISIONS)
    threads: int | None = _opt(None, "inference threads (default: all cores)", type=positive_int)
    no_calibration: bool = _opt(
        False,
        "raw scores: ignore the model's calibration.json (and so its prediction sets)",
        switch=True,
    )
    coverage: float | None = _opt(
        None, "coverage of the conformal prediction sets (default: the saved one, 0.9)"
    )


@dataclass(kw_only=True)
class EvaluateSettings(BackendSettings):
    """`finlora evaluate`: score a saved model on a labelled file."""

    model: str = _req("output dir of `finlora train` (or s3://)")
    data: str = _req("labelled file (or s3://)")
    text_column: str = _opt("text", "column holding the text")
    label_column: str = _opt("label", "column holding the label")
    label_delimiter: str | None = _opt(
        None, "multi-label: labels in one string column split by this"
    )
    label_columns: list[str] | None = _opt(
        None, "multi-label: one 0/1 column per label, comma-separated"
    )
    output: str | None = _opt(None, "write the metrics JSON here")


@dataclass(kw_only=True)
class CheckSettings(BackendSettings):
    """`finlora check`: a saved model on a behavioural suite (finlora/checks.py)."""

    model: str = _req("output dir of `finlora train` (or its ONNX export)")
    suite: str = _opt(
        "financial_sentiment", "a shipped suite's name or a suite file (.yaml, .yml, .jsonl)"
    )
    output: str | None = _opt(None, "write the report JSON here")
    max_failures: int | None = _opt(None, "failing cases to print (default: all)")
    min_pass_rate: float | None = _opt(
        None, "exit with code 1 when the overall pass rate is below this (0-1)"
    )


@dataclass(kw_only=True)
class PredictSettings(BackendSettings):
    """`finlora predict`: classify texts, a file of texts or a whole document."""

    model: str = _req("output dir of `finlora train` (or s3://)")
    texts: list[str] = _opt([], "texts to classify", positional="*")
    input: str | None = _opt(None, "file of texts (.csv, .tsv, .jsonl, .parquet, .txt)")
    text_column: str = _opt("text", "column holding the text in --input")
    output: str | None = _opt(None, "write predictions here (.csv, .jsonl, .parquet)")
    document: str | None = _opt(
        None,
        "classify a whole document (.txt, .xml, .html, .pdf): labelled spans with "
        "character offsets and a summary, as JSON (to --output .json or stdout)",
    )
    segment: str = _opt(
        "sentences",
        "--document pieces: sentences (over-long ones in token windows) or token windows",
        choices=("sentences", "windows"),
    )
    window: int | None = _opt(
        None, "tokens per window (default: the model's max_length)", type=positive_int
    )
    stride: int | None = _opt(
        None, "tokens between window starts (default: half the window)", type=positive_int
    )
    chunk_rows: int = _opt(4096, "rows read from --input at a time", type=positive_int)
    explain: bool = _opt(
        False,
        "add word attributions (integrated gradients, finlora.explain) to each printed record; "
        "runs the torch model even when an ONNX export exists",
        switch=True,
    )
    explain_html: str | None = _opt(
        None, "also write the explanations as a self-contained HTML page here (needs --explain)"
    )


@dataclass(kw_only=True)
class ExportSettings:
    """`finlora export`: the merged model as ONNX (optionally int8), verified."""

    model: str = _req("output dir of `finlora train`")
    format: str = _opt("onnx", "export format", choices=("onnx",))
    quantize: str | None = _opt(None, "also write an int8 model", choices=("int8",))
    opset: int = _opt(17, "ONNX opset")
    threads: int | None = _opt(None, "ONNX Runtime threads for verification", type=positive_int)


@dataclass(kw_only=True)
class SageMakerLaunchSettings:
    """`finlora sagemaker launch`: a SageMaker training job running `finlora train`."""

    s3_data: str = _req("s3:// prefix or file: the train channel")
    s3_validation: str | None = _opt(None, "s3:// prefix or file: the validation channel")
    s3_test: str | None = _opt(None, "s3:// prefix or file: the test channel")
    role: str = _req("IAM role ARN SageMaker runs the job as")
    image_uri: str = _req("ECR image built from our Dockerfile")
    instance_type: str = _opt("ml.g4dn.xlarge", "training instance type")
    instance_count: int = _opt(1, "instances")
    volume_gb: int = _opt(30, "EBS volume per instance")
    output_s3: str | None = _opt(
        None, "where SageMaker writes model.tar.gz (default: s3://BUCKET/finlora/jobs)"
    )
    job_name: str | None = _opt(None, "default: finlora-YYYYmmdd-HHMMSS")
    max_run: int = _opt(24 * 3600, "seconds of training")
    spot: bool = _opt(False, "managed spot training (cheaper)")
    max_wait: int | None = _opt(None, "spot: seconds incl. waiting (2x max_run)")
    checkpoint_s3: str | None = _opt(
        None, "checkpoint sync target (--spot default: OUTPUT/JOB/checkpoints)"
    )
    config: str | None = _opt(None, "YAML recipe; its settings become hyperparameters")
    region: str | None = _opt(None, "AWS region (default: the standard chain)")
    endpoint_url: str | None = _opt(None, "SageMaker API endpoint override (testing)")
    dry_run: bool = _opt(False, "print the request, do not submit")
    train_flags: list[str] = _opt(
        [], "-- then `finlora train` flags", positional=argparse.REMAINDER
    )


# Blocks of flags shared by several commands, titled in `--help`.
TITLES = {BackendSettings: "how the model runs"}


@dataclass(frozen=True)
class Command:
    """One subcommand: its settings class, the function run on them and its texts.

    `run` is the name of a function of this module (looked up when the command runs).
    `resolve` turns the typed flags (and the `--config` recipe, when `recipe`) into what `run`
    takes; by default an instance of `settings`.
    """

    name: str
    settings: type
    run: str
    help: str
    description: str | None = None
    recipe: bool = False
    resolve: Callable[[dict, str | None], Any] | None = None


def commands() -> list[Command]:
    """The subcommands of `finlora` (a new command: a settings class, a function, one entry)."""
    from finlora.config import CompareConfig, ProfileConfig

    return [
        Command(
            "train",
            TrainConfig,
            "cmd_train",
            "train a classifier and write its artifacts",
            "Train a LoRA (default) or fully fine-tuned classifier. Precedence: flags > "
            "--config recipe > the named dataset's preset (--preset) > defaults.",
            recipe=True,
            resolve=train_config,
        ),
        Command(
            "evaluate", EvaluateSettings, "cmd_evaluate", "score a saved model on a labelled file"
        ),
        Command("predict", PredictSettings, "cmd_predict", "classify texts with a saved model"),
        Command(
            "check",
            CheckSettings,
            "cmd_check",
            "behavioural checks of a saved model: minimal pairs, invariance, direction",
            "Score a trained model on a behavioural suite (CheckList-style: minimal pairs that "
            "flip the label, invariance to numbers and names) and print the pass rate per "
            "capability and the failing cases. See docs/checks.md.",
        ),
        Command(
            "export",
            ExportSettings,
            "cmd_export",
            "export a trained model to ONNX (optionally int8), verified against PyTorch",
            "Write <model>/onnx/: the merged model as ONNX with dynamic batch and sequence "
            "axes, tokenizer, labels and export.json. Fails if the export does not reproduce "
            "PyTorch's predictions.",
        ),
        Command(
            "serve",
            serve_settings_class(),
            "cmd_serve",
            "serve a trained model over HTTP (FastAPI + uvicorn)",
            "POST /v1/predict /v1/classify-document, GET /healthz /readyz /v1/model /metrics. "
            "Every option can also be set as an environment variable FINLORA_<OPTION>; "
            "flags win over the environment.",
            resolve=lambda flags, _: flags,  # the environment comes in under the flags
        ),
        Command(
            "compare",
            CompareConfig,
            "cmd_compare",
            "full fine-tuning vs LoRA vs TF-IDF baseline on the same split(s): report + plots",
            "Train each strategy on the same de-duplicated split (or the same stratified "
            "folds) with its own recipe; write report.md, report.json and PNG plots. "
            "Rerunning with the same --output_dir skips finished runs.",
        ),
        Command(
            "profile",
            ProfileConfig,
            "cmd_profile",
            "profile a labelled dataset: classes, lengths, duplicates, frequent tokens",
            "Write profile.md, profile.json and PNG plots describing a dataset.",
        ),
        Command(
            "models",
            _Lazy("finlora.base_models", "ModelsSettings"),
            "cmd_models",
            "list the base models available offline: parameters, size, ready or missing",
        ),
        Command(
            "sagemaker launch",
            SageMakerLaunchSettings,
            "cmd_sagemaker_launch",
            "create a SageMaker training job running `finlora train`",
            "Create a SageMaker training job with the finlora image. Training settings come "
            "from --config and from `finlora train` flags after `--`, e.g. "
            "`finlora sagemaker launch ... -- --epochs 3 --no_lora`.",
        ),
    ]


def settings_class(command: Command) -> type:
    """The command's settings class, imported now when it was named lazily."""
    settings = command.settings
    return settings.load() if isinstance(settings, _Lazy) else settings


def serve_settings_class() -> Any:
    """`ServeSettings`, imported only when `finlora serve` is parsed (pydantic)."""
    return _Lazy("finlora.serve.settings", "ServeSettings")


@dataclass(frozen=True)
class _Lazy:
    module: str
    name: str

    def load(self) -> type:
        import importlib

        try:
            return getattr(importlib.import_module(self.module), self.name)
        except ImportError as exc:
            raise FinloraError(
                f"this command needs the serve extra ({exc.name} is missing): "
                "pip install 'finlora[serve]'"
            ) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finlora", description=__doc__.splitlines()[0])
    parser.register("action", "parsers", _SubParsers)
    parser.add_argument("--version", action="version", version=f"finlora {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in commands():
        *outer, name = command.name.split()
        target = sub
        if outer:  # `finlora sagemaker launch`
            if outer[0] not in groups:
                group = sub.add_parser(outer[0], help=f"run training as a {outer[0]} job")
                group.add_argument(
                    "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
                )
                group.register("action", "parsers", _SubParsers)
                groups[outer[0]] = group.add_subparsers(
                    dest="action", required=True, parser_class=_Parser
                )
            target = groups[outer[0]]
        command_parser = target.add_parser(name, help=command.help, description=command.description)
        # `finlora train -q` as well as `finlora -q train`
        command_parser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
        command_parser.set_defaults(handler=command.run, _settings=command)
        command_parser._finlora_command = command  # flags added by populate()
    return parser


def populate(parser: argparse.ArgumentParser | None) -> argparse.ArgumentParser | None:
    """Add a subcommand's generated flags (once), when it is chosen or inspected."""
    command = getattr(parser, "_finlora_command", None)
    if command is None:
        return parser
    del parser._finlora_command
    settings = settings_class(command)
    if command.recipe:
        parser.add_argument(
            "--config", help="YAML recipe (see config/; a packaged recipe's name works too)"
        )
    add_flags(parser, settings_flags(settings, {**GROUP_TITLES, **TITLES}))
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser with its flags, by name ("train", "sagemaker launch")."""
    out = {}
    for action in parser._subparsers._group_actions:
        for name, child in action.choices.items():
            populate(child)
            if child._subparsers is not None:
                out.update({f"{name} {k}": v for k, v in subcommand_parsers(child).items()})
            else:
                out[name] = child
    return out


def _load_predictor(args: EvaluateSettings | PredictSettings, model: str | None = None):
    from finlora.predictor import Predictor

    return Predictor.load(
        model or args.model,
        batch_size=args.batch_size,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        calibrated=not args.no_calibration,
        coverage=args.coverage,
    )


def _flags(args: argparse.Namespace) -> dict:
    """The settings the user typed (argparse suppresses the others); not the recipe."""
    command = getattr(args, "_settings", None)
    internal = _INTERNAL | ({"config"} if command is None or command.recipe else set())
    return {k: v for k, v in vars(args).items() if k not in internal}


def fetch(path: str | None, folder: Path, endpoint_url: str | None, directory: bool = False):
    """A local path for `path`: itself, or a download of an s3:// file or prefix."""
    if not (path or "").startswith("s3://"):
        return path
    from finlora.cloud import s3

    if directory:
        return str(s3.download_dir(path, folder / "model", endpoint_url))
    return str(s3.download_file(path, folder / "input", endpoint_url))


def train_config(flags: dict, config_path: str | None) -> TrainConfig:
    """`finlora train`'s settings: in a SageMaker container, typed flags win over the job's
    hyperparameters.json (whose `config` names the recipe)."""
    from finlora.cloud import sagemaker

    container = sagemaker.detect()
    if container is not None:
        hyperparameters = sagemaker.hyperparameters(container)
        config_path = config_path or hyperparameters.pop("config", None)
        unknown = sorted(set(hyperparameters) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise FinloraError(
                f"unknown hyperparameter(s) {', '.join(unknown)}; use `finlora train` flag names"
            )
        flags = {**hyperparameters, **flags}
    return resolve_config(flags, config_path)


def cmd_train(config: TrainConfig) -> int:
    from finlora.api import run  # torch and transformers: only once settings hold

    results, config = run(config)
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


def cmd_evaluate(args: EvaluateSettings) -> int:
    from finlora.api import metrics_block
    from finlora.artifacts import check_output_file, write_json
    from finlora.data.sources import as_label_list, read_labelled
    from finlora.data.validate import check_known_labels, clean
    from finlora.evaluation import format_multilabel_report, format_report

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
            label_columns=args.label_columns or None,
        )
        if predictor.multi_label and not isinstance(raw["label"].iloc[0], list):
            raw["label"] = raw["label"].map(as_label_list)
        frame, _ = clean(raw, args.data)
        check_known_labels(
            frame, predictor.labels, args.data, fix="evaluate a model trained on them"
        )
        block = metrics_block(predictor, frame["text"], frame["label"])
        report = format_multilabel_report if predictor.multi_label else format_report
        log.info("\n%s", report(block, Path(data).name))
        if args.output:
            output = Path(tmp) / "metrics.json" if args.output.startswith("s3://") else args.output
            write_json(output, block)
            if output != args.output:
                from finlora.cloud.s3 import upload_file

                upload_file(output, args.output, endpoint)
    print(json.dumps(block))
    return 0


def cmd_predict(args: PredictSettings) -> int:
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
    if args.explain_html and not args.explain:
        raise FinloraError("--explain_html FILE goes with --explain")
    if args.explain:
        if not args.texts:
            raise FinloraError("--explain explains texts given on the command line")
        if args.backend == "onnx" or args.precision == "int8":
            raise FinloraError(
                "--explain runs the torch model (it takes gradients); drop --backend onnx and "
                "--precision int8"
            )
        if args.explain_html:
            check_output_file(args.explain_html)
        args = replace(args, backend="torch")
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
        if args.explain:
            explain_texts(predictor, args.texts, args.explain_html)
            return 0
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


def cmd_sagemaker_launch(args: SageMakerLaunchSettings) -> int:
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
        # the preset follows from the dataset again in the job: sent only when typed
        hyperparameters=sagemaker.hyperparameters_from(
            replace(config, preset=overrides.get("preset")), overrides
        ),
    )
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    arn = sagemaker.submit(request, args.region, args.endpoint_url)
    print(json.dumps({"TrainingJobName": job, "TrainingJobArn": arn}))
    return 0


def explain_texts(predictor, texts: list[str], html_path: str | None) -> None:
    """`predict --explain`: each prediction record with its word attributions, one JSON line
    each; with `html_path`, the highlighted texts as an HTML page too."""
    from finlora.explain import Explainer, write_html

    records = Explainer(predictor).explain(texts)
    for prediction, explained in zip(predictor.predict(texts), records):
        print(json.dumps({**prediction, **explained}))
    if html_path:
        log.info("explanations written to %s", write_html(html_path, texts, records))


def predict_document(predictor, args: PredictSettings, output: str | None) -> None:
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


def cmd_export(args: ExportSettings) -> int:
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


def cmd_compare(settings) -> int:
    from finlora.compare import compare

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


def cmd_check(settings: CheckSettings) -> int:
    from finlora.checks import check, passes

    return 0 if passes(check(settings), settings) else 1


def cmd_models(settings) -> int:
    from finlora.base_models import run_models

    return run_models(settings)


def cmd_profile(settings) -> int:
    from finlora.profile import profile

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


def cmd_serve(options: dict) -> int:
    """`options`: the flags typed; the environment (FINLORA_*) and defaults fill the rest."""
    from finlora.serve.app import run

    run({k: v for k, v in options.items() if v is not None})
    return 0


def settings_of(command: Command, args: argparse.Namespace) -> Any:
    """What the command's function takes: its settings from the flags typed."""
    flags = _flags(args)
    if command.resolve is not None:
        return command.resolve(flags, getattr(args, "config", None))
    return settings_class(command)(**flags)


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
        command: Command = args._settings
        settings = settings_of(command, args)
        handler = globals()[command.run]
        if command.name == "serve":  # uvicorn handles SIGTERM itself: a graceful shutdown
            return handler(settings)
        with sigterm_raises_terminated():
            return handler(settings)
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
