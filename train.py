"""The seed README's entry point: `python train.py --model_name ... --use_lora --fp16`.

A thin shim over `finlora train`; every flag of that command works here.
"""

import sys

from finlora.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
