"""docs/contributing.md, followed step by step in scratch copies of the package (the real tree is never edited).

* "Add an op": the guide's `Op(...)` row, read from the guide and filled in, appended to `OPS` with its
  `TOLERANCE` in the copy's tests/test_ops.py; the copy's op tests run there, and the default search space
  holds the op in its group, whose moves switch it on.
* "Add a search method" (docs/search.md's template, read from that file): the module, its import in
  metaaug/search/__init__.py, its `MetatrainConfig.method` choice and settings section; then `metaaug prepare`
  and `metaaug metatrain` with `metatrain.method: my_method` in a scratch project.

A step the docs no longer describe (a template that changed shape, a registration that moved) fails here with
what was expected. The guide's other two recipes have their tests beside the code they extend:
tests/test_sources.py::test_a_new_source_is_one_module and
tests/test_structure.py::test_a_new_stage_is_its_module_its_entry_and_its_dvc_yaml_entry.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_params

DOCS = REPO / "docs"

# The op the test adds: Invert, no magnitude, in the histogram group (as Solarize, its thresholded form), its
# Albumentations twin InvertImg. Each key is a placeholder of the guide's row.
INVERT = {"Name": '"Invert"', "max_value": "0.0", "signed": "False", "group": '"histogram"',
          "torch_fn": "lambda images, values, generator=None: 1.0 - images",
          "albumentations_fn": "_no_value(lambda: A.InvertImg(p=1.0))"}

# The settings section docs/search.md asks for (a RaceConfig subclass: the template races).
MY_CONFIG = '''class MyConfig(RaceConfig):
    """The `my_method` method's settings: the racing engine's."""


'''

# What the template's `...` stands for in its bracket: the anchors' points, beside TA-Wide's (the references).
MY_REFERENCES = ("*(Entrant(point, f\"{name}'s point\", True, name)\n"
                 "                  for name, point in anchor_points(ctx.space, ctx.cfg.anchors))]")


def guide_block(doc: Path, heading: str) -> str:
    """The first ```python block under the `## heading` section of a docs file."""
    section = doc.read_text().split(f"## {heading}\n", 1)
    assert len(section) == 2, f"{doc.name}: no section '## {heading}'"
    block = re.search(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert block, f"{doc.name}: section '{heading}' has no python block"
    return block.group(1)


def edit(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in a file of the copy (a guide step that no longer applies fails)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name}: expected one {old!r} to edit, found {text.count(old)}"
    path.write_text(text.replace(old, new))


def run_in(root: Path, *cmd: str) -> subprocess.CompletedProcess:
    """A command in the copy, its package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def op_row(values: dict[str, str]) -> str:
    """The guide's `Op(...)` row with each placeholder replaced by its value."""
    template = guide_block(DOCS / "contributing.md", "Add an op").strip().rstrip(",")
    call = ast.parse(template, mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "Op" and not call.keywords, template
    names = [arg.value if isinstance(arg, ast.Constant) else arg.id for arg in call.args]
    assert names == list(values), f"the guide's row names {names}; this test fills {list(values)}"
    call.args = [ast.parse(values[name], mode="eval").body for name in names]
    return ast.unparse(call)


def test_a_new_op_is_one_row_and_its_tolerance(tmp_path):
    """"Add an op": the row appended to OPS and the tolerance to TOLERANCE, nothing else; in the copy, the parity
    test runs the op against its twin and the table-wide checks take it; the default search space holds it in its
    group, off at TrivialAugment-Wide's point and under the group's share move, on once the race's moves switch
    the group off and on again."""
    shutil.copytree(REPO / "metaaug", tmp_path / "metaaug", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    edit(tmp_path / "metaaug/ops.py", "\n]}\nOP_NAMES", f"\n    {op_row(INVERT)},\n]}}\nOP_NAMES")
    edit(tmp_path / "tests/test_ops.py", "TOLERANCE = {\n", 'TOLERANCE = {\n    "Invert": (0.0, 0.0),\n')
    checks = run_in(tmp_path, sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_ops.py",
                    "-k", "Invert or table_shape or search_group or untouched")
    parity = [line for line in checks.stdout.splitlines() if "test_torch_matches_albumentations[" in line]
    assert len(parity) == 9 and all("Invert" in line and "PASSED" in line for line in parity), checks.stdout[-3000:]
    moved = run_in(tmp_path, sys.executable, "-c", """if True:
        import json
        from metaaug.config import defaults
        from metaaug.ops import OP_NAMES
        from metaaug.search import SearchSpace
        from metaaug.search.space import moves
        space = SearchSpace(tuple(defaults().metatrain.ops or OP_NAMES))  # as metatrain builds it
        weights = lambda theta: dict(zip(space.op_list, space.policy(theta).weights))
        start = space.initial()
        off = dict(moves(space, start))["histogram ops off"]
        print(json.dumps({"members": space.groups["histogram"], "start": weights(start),
                          "shared": weights(dict(moves(space, start))["histogram ops at 75 % of the mass"]),
                          "on": weights(dict(moves(space, off))["histogram ops at 75 % of the mass"])}))""")
    space = json.loads(moved.stdout)
    assert "Invert" in space["members"], space
    # TrivialAugment-Wide's point lacks it, and the share move scales only the group's ops that are on ...
    assert space["start"]["Invert"] == space["shared"]["Invert"] == 0.0 < space["shared"]["Solarize"], space
    # ... while switching the group off and on again gives all its ops one weight, the new one too.
    assert space["on"]["Invert"] == pytest.approx(space["on"]["Solarize"]) and space["on"]["Invert"] > 0.1, space


def write_my_method(root: Path) -> None:
    """docs/search.md's "Adding a search method" in the copy: the template as the module its first line names,
    its `...` filled with the references it needs, and the two registrations the docs name."""
    template = guide_block(DOCS / "search.md", "Adding a search method")
    target = re.match(r"# (metaaug/search/(\w+)\.py)\n", template)
    assert target and target.group(2) == "my_method", template.splitlines()[0]
    assert template.count("...") == 1 and ", ...]" in template, "the template's one gap is its bracket's references"
    module = template.replace(", ...]", ",\n                " + MY_REFERENCES)
    (root / target.group(1)).write_text(module.replace("\n", "\nfrom metaaug.search.space import anchor_points\n", 1))
    edit(root / "metaaug/search/__init__.py", "race as _race", "race as _race, my_method as _my_method")
    config = root / "metaaug/config.py"
    choices = re.search(r'method: Literal\[([^\]]*)\]', config.read_text()).group(0)
    edit(config, choices, choices[:-1] + ', "my_method"]')
    edit(config, "class MetatrainConfig(", MY_CONFIG + "class MetatrainConfig(")
    edit(config, "    cem: CemConfig = CemConfig()", "    my_method: MyConfig = MyConfig()\n    cem: CemConfig = CemConfig()")


@pytest.mark.slow  # prepare and metatrain through the CLI, in subprocesses
def test_a_new_search_method_is_its_module_and_two_registrations(tmp_path):
    """The method, added as docs/search.md says, passes the registration check the docs name and runs as
    `metatrain.method: my_method`: its bracket chose the policy metatrain wrote, and search.json names it."""
    from helpers import make_project

    params = tiny_params(**{"metatrain.workers": 1, "metatrain.method": "my_method"})
    params["metatrain"]["my_method"] = dict(params["metatrain"]["race"])  # the tiny racing settings
    root = make_project(tmp_path / "project", params)
    shutil.copytree(REPO / "tests", root / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    write_my_method(root)
    run_in(root, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_metalearn.py",
           "-k", "every_registered_method")  # the check docs/search.md names: the choices, sections and METHODS agree
    cli = str(Path(sys.executable).parent / "metaaug")
    run_in(root, cli, "prepare")
    done = run_in(root, cli, "metatrain")
    assert "metatrain: my_method" in done.stdout, done.stdout
    search = json.loads((root / "models/policy/search.json").read_text())
    assert search["method"] == "my_method" and search["stopped"] == "the my_method method finished", search
    assert search["finalists"][0]["status"] == "chosen", search["finalists"]
    assert json.loads((root / "models/policy/policy.json").read_text())["provenance"]["method"] == "my_method"
