"""run.sh's grid for a decoder-only model (issue 19, item 4): the family comes from tpv.py (`info --grid`: the
model's config.json, else --family), and with it the grid's defaults (the family's GRID: the paper's LLM runs),
the options it takes and, in every tpv.py train the grid runs, the recipe; --plan, --slurm and --estimate price and
run that grid. Most tests need only a config.json of a tiny Llama (nothing is loaded: the plan reads the family,
the estimate times random weights of the shape); the run end to end needs a tiny Llama with Llama 3's vocabulary
from ../shared/assets.
"""
import json
import os
import subprocess
import sys

import pytest

import families
import model_llama
import model_t5
from benchmarks.llama import LLAMA_SHAPES

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above tests/


def llama_config(folder):
    """A folder with only the config.json of a tiny Llama: enough for the family, the plan and the estimate."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", **LLAMA_SHAPES["tiny"]}, f)
    return str(folder)


def run_cli(*args):
    """`python tpv.py ARGS` (the cli_in_process fixture runs it in this process instead)."""
    return subprocess.run([sys.executable, os.path.join(HERE, "tpv.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=HERE, timeout=300)


def grid_facts(out):
    """`tpv.py info --grid`'s lines as {key: value}."""
    return dict(line.split(" ", 1) for line in out.splitlines())


# -----------------------------------------------------------------------------
# tpv.py info --grid: the one question run.sh asks

def test_info_grid_reads_the_family_from_config_json_and_loads_nothing(tmp_path, cli_in_process):
    folder = llama_config(tmp_path / "tiny-llama")  # no weights, no tokenizer: only config.json is read
    done = run_cli("info", "--grid", "--model", folder)
    assert done.returncode == 0, done.stderr
    assert grid_facts(done.stdout) == {
        "family": "llama", "name": model_llama.NAME, "source": "config.json", "origins": "0-2",
        "tasks": ",".join(model_llama.GRID["tasks"]), "options": " ".join(model_llama.OPTIONS)}


@pytest.mark.parametrize("args, family, source", [
    (["--model", "meta-llama/Llama-3.1-8B-Instruct", "--family", "llama"], model_llama, "--family"),
    (["--model", "t5-base"], model_t5, "default"),  # a hub name not on this machine: the paper's family
    (["--model", "org/some-model", "--family", "t5"], model_t5, "--family"),
])
def test_info_grid_of_a_hub_name_not_here_is_its_family_option_or_t5(tmp_path, cli_in_process, args, family, source):
    done = run_cli("info", "--grid", "--models-dir", tmp_path, *args)
    assert done.returncode == 0, done.stderr
    facts = grid_facts(done.stdout)
    assert (facts["family"], facts["source"]) == (family.FAMILY, source)
    assert (facts["origins"], facts["tasks"]) == (family.GRID["origins"], ",".join(family.GRID["tasks"]))
    assert not os.listdir(tmp_path)  # nothing downloaded


@pytest.mark.parametrize("args, message", [
    (["--family", "t5"], "is a Llama (Llama 3, DeepSeek-LLM) model (its config.json), not --family t5"),
    (["--family", "gpt"], "argument --family: invalid choice: 'gpt'"),
])
def test_info_grid_refuses_a_family_the_config_contradicts_in_one_line(tmp_path, cli_in_process, args, message):
    done = run_cli("info", "--grid", "--model", llama_config(tmp_path / "m"), *args)
    assert (done.returncode, done.stdout, done.stderr.count("\n")) == (2, "", 1) and message in done.stderr


def test_every_familys_grid_is_origins_and_tasks_tpv_knows():
    import data
    import runs
    for module in families.BY_NAME.values():
        assert runs.parse_origins(module.GRID["origins"]) and set(module.GRID["tasks"]) <= set(data.TASKS)
