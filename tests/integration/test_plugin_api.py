"""kitchen.api is the plugin front door: the cookbook imports only from it, and it stays cheap.

The cookbook (``examples/cookbook``) stands for every external plugin package: if it
needed a name from a deeper module, so would theirs, and that module could never move.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

ROOT = REPO
COOKBOOK = ROOT / "examples" / "cookbook"


def _kitchen_imports(path: Path):
    """(line, module, names) of every import of kitchen or a kitchen module in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kitchen" or alias.name.startswith("kitchen."):
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "kitchen" or node.module.startswith("kitchen."):
                yield node.lineno, node.module, tuple(a.name for a in node.names)


def test_the_cookbook_imports_kitchen_only_through_kitchen_api():
    import kitchen.api

    sources = sorted(COOKBOOK.rglob("*.py"))
    assert sources, COOKBOOK
    wrong, unknown, used = [], [], set()
    for path in sources:
        for line, module, names in _kitchen_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module != "kitchen.api" or not names:  # `import kitchen.api` would reach past it as kitchen.api.x.y
                wrong.append(f"{where}: {module}")
            unknown += [f"{where}: {n}" for n in names if n not in kitchen.api.__all__]
            used.update(names)
    assert not wrong, "the cookbook must import kitchen only as `from kitchen.api import ...`:\n" + "\n".join(wrong)
    assert not unknown, "names imported from kitchen.api that its __all__ does not list:\n" + "\n".join(unknown)
    assert {"Stage", "Context", "StepOutput", "Workflow", "RunSpec", "Event"} <= used  # the check saw the imports


def test_kitchen_api_exports_what_a_plugin_author_needs():
    import kitchen.api as api

    assert len(api.__all__) == len(set(api.__all__))
    missing = [n for n in api.__all__ if not hasattr(api, n)]
    assert not missing
    needed = {
        # the list: the workflow DSL, the stage contract, the ports, envs, evaluators, sinks
        "Workflow", "stage", "loop", "conditional", "parallel", "Stage", "Context", "StepOutput",
        "TrainingClient", "SamplingClient", "Datum", "AdamParams", "SamplingParams", "SampleResult",
        "Env", "Problem", "Score", "Evaluator", "EvalResult", "Sink", "Event", "Renderer",
        "RunSpec", "ChatDataKeys", "BatchKeys", "SamplingKeys", "RolloutKeys", "ConfigError", "KitchenError",
    }
    assert needed <= set(api.__all__), needed - set(api.__all__)
    # a plugin that subclasses the contract gets kitchen's real classes, not copies
    from kitchen.engine.stage import Stage
    from kitchen.ports.training import TrainingClient

    assert api.Stage is Stage and api.TrainingClient is TrainingClient


def test_the_facade_reaches_the_api_names_without_importing_them_up_front():
    code = (
        "import sys, kitchen\n"
        "before = 'kitchen.api' in sys.modules\n"
        "from kitchen import Stage\n"
        "import kitchen.api\n"
        "same = all(getattr(kitchen, n) is getattr(kitchen.api, n) for n in kitchen.api.__all__)\n"
        "try:\n    kitchen.no_such_name\nexcept AttributeError:\n    missing = True\n"
        "from kitchen import errors\n"  # submodules still import as submodules
        "print(before, Stage is kitchen.api.Stage, same, missing, errors.__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["False", "True", "True", "True", "kitchen.errors", "False"]


def test_importing_kitchen_api_loads_no_heavy_library():
    code = "import sys, kitchen.api; print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
