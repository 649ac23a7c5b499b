"""The `tc` commands, one module per family: cache (encode, verify, info), train (train-student), evaluate (probe,
eval, demo), tasks (finetune, cache-logits, predict), export. pipeline/cli.py registers them in one list.

Each module imports only typer and the settings dataclasses at the top, so that `tc --help` and `tc verify` start
fast; the work is imported when a command runs. Options come from the settings dataclasses (pipeline/options.py).
"""
