"""Run one tinker-cookbook training loop, unmodified, against the Tinker server named by
``TINKER_BASE_URL`` / ``TINKER_API_KEY``: ``python tests/support/cookbook_loops.py sft|rl|dpo ...``.

The slow tests start this as a subprocess, as a cookbook user runs their script, so they
can kill it mid-run and start it again (the cookbook then resumes from the ``tinker://``
path it recorded in ``checkpoints.jsonl``). Everything here is the cookbook's own public
API (``supervised.train``, ``rl.train``, ``preference.train_dpo``); only the sizes are
small enough for two CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2's chat template is ChatML (<|im_start|>role ... <|im_end|>); the cookbook's Qwen3
# instruct renderer writes exactly that, without SmolLM2's default system prompt.
RENDERER = "qwen3_instruct"


def sft(a: argparse.Namespace) -> None:
    from tinker_cookbook.renderers import TrainOnWhat
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=MODEL, renderer_name=RENDERER, max_length=128,
                                            batch_size=a.batch_size, train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    config = train.Config(
        log_path=a.log_path, model_name=MODEL, recipe_name="kitchen_serve_sft", renderer_name=RENDERER,
        dataset_builder=FromConversationFileBuilder(common_config=common, file_path=a.data),
        learning_rate=a.lr, lr_schedule="constant", num_epochs=a.epochs, lora_rank=8,
        save_every=a.save_every, eval_every=0, max_steps=a.max_steps,
    )
    asyncio.run(train.main(config))


def rl(a: argparse.Namespace) -> None:
    from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticDatasetBuilder
    from tinker_cookbook.rl import train

    builder = ArithmeticDatasetBuilder(batch_size=a.batch_size, group_size=4, n_batches=a.max_steps,
                                       model_name_for_tokenizer=MODEL, renderer_name=RENDERER)
    config = train.Config(
        log_path=a.log_path, model_name=MODEL, recipe_name="kitchen_serve_rl", renderer_name=RENDERER,
        dataset_builder=builder, learning_rate=a.lr, max_tokens=8, lora_rank=8,
        save_every=a.save_every, eval_every=0, max_steps=a.max_steps,
    )
    asyncio.run(train.main(config))


def dpo(a: argparse.Namespace) -> None:
    from tinker_cookbook.preference import train_dpo
    from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
    from tinker_cookbook.preference.preference_datasets import ComparisonBuilderFromJsonl
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=MODEL, renderer_name=RENDERER, max_length=128,
                                            batch_size=a.batch_size)
    config = train_dpo.Config(
        log_path=a.log_path, model_name=MODEL, recipe_name="kitchen_serve_dpo", renderer_name=RENDERER,
        dataset_builder=DPODatasetBuilderFromComparisons(common_config=common,
                                                         comparison_builder=ComparisonBuilderFromJsonl(train_path=a.data)),
        learning_rate=a.lr, lr_schedule="constant", num_epochs=a.epochs, dpo_beta=0.1, lora_rank=8,
        save_every=a.save_every, eval_every=0, max_steps=a.max_steps,
    )
    train_dpo.main(config)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("loop", choices=("sft", "rl", "dpo"))
    p.add_argument("--log-path", required=True)
    p.add_argument("--data", default="")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--save-every", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    {"sft": sft, "rl": rl, "dpo": dpo}[a.loop](a)


if __name__ == "__main__":
    main()
