"""`finlora` command line: parse, then call one stage function per subcommand.

User errors (`FinloraError`) print one line and exit with code 2; bugs still raise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify texts with a saved model")
    predict.add_argument("--model", required=True, help="output dir of `finlora train`")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--input", help="file of texts (.csv, .tsv, .jsonl, .parquet, .txt)")
    predict.add_argument("--text_column", default="text")
    predict.add_argument("--output", help="write predictions here (.csv, .jsonl, .parquet)")
    predict.add_argument("--batch_size", type=int, default=64)
    predict.set_defaults(handler=cmd_predict)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from finlora.training import train

    overrides = {
        k: v for k, v in vars(args).items() if k not in {"command", "handler", "config", "quiet"}
    }
    config = resolve_config(overrides, args.config)
    results = train(config)
    summary = {k: results[k] for k in ("strategy", "trainable_fraction", "train_seconds")}
    test = results["test"]
    if test:
        summary["test_macro_f1"] = round(test["macro_f1"], 4)
        second = "micro_f1" if results["task"] == "multi_label" else "accuracy"
        summary[f"test_{second}"] = round(test[second], 4)
    print(json.dumps({"output_dir": config.output_dir, **summary}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from finlora.artifacts import write_json
    from finlora.data.sources import read_labelled
    from finlora.data.validate import check_known_labels, clean
    from finlora.evaluation import classification_report, format_report
    from finlora.predictor import Predictor

    predictor = Predictor.load(args.model, batch_size=args.batch_size)
    frame, _ = clean(read_labelled(args.data, args.text_column, args.label_column), args.data)
    check_known_labels(frame, predictor.labels, args.data)
    index = {name: i for i, name in enumerate(predictor.labels)}
    block = classification_report(
        [index[lab] for lab in frame["label"]],
        predictor.predict_ids(frame["text"]),
        predictor.labels,
    )
    log.info("\n%s", format_report(block, Path(args.data).name))
    if args.output:
        write_json(args.output, block)
    print(json.dumps(block))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from finlora.predict_io import predict_file
    from finlora.predictor import Predictor

    if bool(args.texts) == bool(args.input):
        raise FinloraError("give texts to classify or --input FILE (one of the two)")
    predictor = Predictor.load(args.model, batch_size=args.batch_size)
    if args.input:
        predict_file(predictor, args.input, args.text_column, args.output)
        return 0
    for record in predictor.predict(args.texts):
        print(json.dumps(record))
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
        print(f"finlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finlora: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
