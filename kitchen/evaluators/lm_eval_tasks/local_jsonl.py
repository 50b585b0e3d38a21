"""Loads a task's JSONL file from the task's own folder (not the working directory).

lm-eval passes ``dataset_kwargs`` to ``custom_dataset``; ``file`` names the JSONL next to
this module, so the bundled task works wherever `kitchen eval` is run from.
"""

from pathlib import Path

import datasets


def load(file: str, **_metadata):
    path = Path(__file__).parent / file
    return datasets.DatasetDict({"test": datasets.load_dataset("json", data_files=str(path), split="train")})
