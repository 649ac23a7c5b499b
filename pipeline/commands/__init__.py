"""The `tc` commands, one module per family: cache (encode, verify, info), train (train-student), evaluate (probe,
eval, demo), tasks (finetune, cache-logits, predict), export. pipeline/cli.py registers them in one list.

Each module imports at the top only typer, the settings dataclasses and light modules they load anyway (never
torch, transformers or scipy), so that `tc --help` and `tc verify` start fast; the work is imported when a command
runs. Options come from the settings dataclasses (pipeline/options.py).
"""
