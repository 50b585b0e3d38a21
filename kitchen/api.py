"""The plugin front door: everything a package that adds to kitchen imports, from one module.

A plugin (a workflow, a stage, an env, an evaluator, a renderer, a sink; see
``examples/cookbook``) writes ``from kitchen.api import ...`` and nothing deeper, so
kitchen's modules can move between releases without breaking it: the names here are
the contract, the paths behind them are not. Importing this module is cheap (no torch,
no transformers, no datasets), so a plugin's module can import it at the top and
``kitchen --help`` stays fast.

What is here, by what a plugin author is doing:

- **a workflow**: :class:`Workflow` and the DSL (:func:`stage`, :func:`loop`,
  :func:`conditional`, :func:`parallel`, :func:`every`), the pieces every workflow spells
  the same way (:func:`restore_and_evaluate`, :func:`periodic`, :func:`finish`,
  :func:`epochs_of_batches`), the loop sources (:func:`steps`, :func:`epochs`,
  :func:`batches`) and the built-in stages a workflow reuses (:class:`OpenSession`,
  :class:`Evaluate`, :class:`Checkpoint`..., and :class:`RolloutStage`, the base a
  rollout stage subclasses to sample its groups in parallel lanes);
- **its config schema**: :class:`RunSpec` (the keys every workflow shares) and the key
  groups a schema mixes in (:class:`ChatDataKeys`, :class:`BatchKeys`,
  :class:`SamplingKeys`, :class:`RolloutKeys`...);
- **a stage**: :class:`Stage`, :class:`Context`, :class:`StepOutput`, the typed state
  built-in stages share (:class:`Session`, :class:`Rollouts`, :class:`ChatData`...), and
  the helpers that turn rows and samples into datums;
- **the ports** a stage calls: :class:`TrainingClient`, :class:`SamplingClient` and their
  value types (:class:`Datum`, :class:`AdamParams`, :class:`SamplingParams`...), and the
  stores;
- **an env** (:class:`Env`, :class:`Problem`, :class:`Score`), **an evaluator**
  (:class:`Evaluator`, :class:`EvalResult`, :class:`EvalEnv`), **a renderer**
  (:class:`Renderer`), **a sink** (:class:`Sink`, :class:`Event` and the event names);
- **parts by name**: :func:`build` and :func:`resolve`, the one instantiate path;
- **errors**: :class:`ConfigError`, :class:`DataError`... (a :class:`KitchenError` is one
  paragraph for the user, exit code 2).

Running a recipe from Python is the facade's job: ``kitchen.run``, ``kitchen.validate``,
``kitchen.recipes``, ``kitchen.describe``.
"""

from __future__ import annotations

from kitchen.config.instantiate import build, resolve
from kitchen.config.spec import (
    BatchKeys,
    ChatDataKeys,
    DatasetKeys,
    PolicyGradientKeys,
    RolloutKeys,
    RunSpec,
    SamplingKeys,
)
from kitchen.engine.context import Context, Progress
from kitchen.engine.ir import Workflow, conditional, every, loop, parallel, stage
from kitchen.engine.pipeline import StepOutput, outside_training
from kitchen.engine.record import RunRecord
from kitchen.engine.stage import Stage
from kitchen.errors import (
    BackendError,
    ConfigError,
    DataError,
    KitchenError,
    RunDirError,
    TrainingDiverged,
    did_you_mean,
)
from kitchen.evaluators import EnvAccuracy, EvalEnv, EvalResult, EvalSample, Evaluator, GreedyPreview, TestNLL
from kitchen.ports.stores import BlobStore, DatasetStore, HubClient, HubSnapshot, MetricsStore, StreamingDatasetStore
from kitchen.ports.training import SamplingClient, Tokenizer, TrainingClient
from kitchen.ports.types import (
    LOSS_FNS,
    AdamParams,
    CheckpointRef,
    Datum,
    ForwardBackwardResult,
    LoraConfig,
    LossFn,
    OptimStepResult,
    SampledSequence,
    SampleResult,
    SamplingParams,
    SessionConfig,
)
from kitchen.stages.checkpoint import Checkpoint, SaveWeights
from kitchen.stages.data import ChatData, LoadDataset, PlanBatches, TokenizeChat, batches, end_epoch, epochs
from kitchen.stages.evaluate import Evaluate, PrepareEvaluators
from kitchen.stages.rollouts import (
    Group,
    Rollouts,
    RolloutStage,
    Sample,
    env_groups,
    require_max_steps,
    sample_lane,
    sample_params,
    sampling_seed,
    steps,
)
from kitchen.stages.session import OpenSession, Restore, Session
from kitchen.telemetry.events import (
    ARTIFACT_SAVED,
    EVAL_RESULT,
    EVAL_START,
    EVAL_STOP,
    RUN_INFO,
    RUN_WARNING,
    SAMPLE,
    STAGE_EXCEPTION,
    STAGE_START,
    STAGE_STOP,
    TRAINING_CHECKPOINT,
    TRAINING_EPOCH,
    TRAINING_STEP,
    WORKFLOW_EXCEPTION,
    WORKFLOW_START,
    WORKFLOW_STOP,
    Event,
    RunStatus,
    Sink,
)
from kitchen.train.datum import build_preference_data, build_sft_data, datum_from_rendered, datum_from_sampled
from kitchen.train.distill import teacher_samples_to_sft_rows
from kitchen.train.envs import Env, Problem, Score
from kitchen.train.messages import last_user_text, prompt_part
from kitchen.train.renderers import MessageSpan, RenderedExample, Renderer, TrainOnWhat
from kitchen.workflows.common import epochs_of_batches, finish, periodic, restore_and_evaluate

__all__ = [
    # workflow IR and DSL
    "Workflow", "stage", "loop", "conditional", "parallel", "every",
    # stage contract
    "Stage", "Context", "Progress", "RunRecord", "StepOutput", "outside_training",
    # config schema
    "RunSpec", "DatasetKeys", "ChatDataKeys", "BatchKeys", "SamplingKeys", "PolicyGradientKeys", "RolloutKeys",
    # parts by name
    "build", "resolve",
    # errors
    "KitchenError", "ConfigError", "DataError", "RunDirError", "BackendError", "TrainingDiverged", "did_you_mean",
    # ports
    "TrainingClient", "SamplingClient", "Tokenizer",
    "Datum", "AdamParams", "LoraConfig", "SessionConfig", "ForwardBackwardResult", "OptimStepResult",
    "SamplingParams", "SampledSequence", "SampleResult", "CheckpointRef", "LossFn", "LOSS_FNS",
    "DatasetStore", "StreamingDatasetStore", "BlobStore", "HubClient", "HubSnapshot", "MetricsStore",
    # envs, evaluators, renderers
    "Env", "Problem", "Score",
    "Evaluator", "EvalResult", "EvalSample", "EvalEnv", "EnvAccuracy", "GreedyPreview", "TestNLL",
    "Renderer", "RenderedExample", "MessageSpan", "TrainOnWhat",
    # rows, samples and datums
    "build_sft_data", "build_preference_data", "datum_from_rendered", "datum_from_sampled",
    "teacher_samples_to_sft_rows", "last_user_text", "prompt_part",
    # telemetry
    "Sink", "Event", "RunStatus",
    "WORKFLOW_START", "WORKFLOW_STOP", "WORKFLOW_EXCEPTION", "STAGE_START", "STAGE_STOP", "STAGE_EXCEPTION",
    "TRAINING_STEP", "TRAINING_EPOCH", "TRAINING_CHECKPOINT", "EVAL_START", "EVAL_STOP", "EVAL_RESULT",
    "SAMPLE", "RUN_INFO", "RUN_WARNING", "ARTIFACT_SAVED",
    # built-in stages, state, loop sources, workflow pieces
    "OpenSession", "Restore", "Session",
    "LoadDataset", "TokenizeChat", "PlanBatches", "ChatData", "epochs", "batches", "end_epoch",
    "PrepareEvaluators", "Evaluate", "Checkpoint", "SaveWeights",
    "RolloutStage", "Rollouts", "Group", "Sample", "steps", "env_groups", "sample_lane", "sample_params", "sampling_seed",
    "require_max_steps",
    "restore_and_evaluate", "periodic", "finish", "epochs_of_batches",
]
