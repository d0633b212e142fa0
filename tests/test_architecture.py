"""The structure promised in docs/architecture.md: imports flow one way, the core never branches
on a modality's name, and a new kind of data plus a new model are one object each in a registry."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import genlab
from genlab.config import TrainConfig
from genlab.generation import GenerationRequest, check_request
from genlab.modalities import MODALITIES, Modality, Prepared, Samples
from genlab.models import MODELS, GenerativeModel

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "genlab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """genlab module -> the genlab modules it imports, at module level or inside functions
    (`from pkg import name` counts as importing `pkg.name` when that is a module)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        edges.add(target)
                    elif base in modules:
                        edges.add(base)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "genlab.modalities.text" in graph["genlab.modalities"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_do_not_import_higher_ones() -> None:
    graph = import_graph()
    below = {"genlab.models", "genlab.checkpoint", "genlab.config", "genlab.data",
             "genlab.metrics", "genlab.text"}
    above = ("genlab.runs", "genlab.api", "genlab.cli", "genlab.trainer", "genlab.modalities")
    for module, imports in graph.items():
        if any(module == b or module.startswith(b + ".") for b in below):
            bad = [i for i in imports if i.startswith(above)]
            assert not bad, f"{module} imports {bad}"


MODALITY_NAMES = frozenset(["text", "image"])  # the names the core once branched on


def _comparisons_with_modality_names(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            consts = [v for v in values if isinstance(v, ast.Constant)]
            for v in values:  # in ("text", "image") / in {...}
                if isinstance(v, ast.Tuple | ast.List | ast.Set):
                    consts += [e for e in v.elts if isinstance(e, ast.Constant)]
            if any(c.value in MODALITY_NAMES for c in consts):
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_modalities_compare_with_modality_names() -> None:
    offenders = {}
    for path in [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        if "modalities" in path.parts:
            continue
        if lines := _comparisons_with_modality_names(path):
            offenders[str(path.relative_to(ROOT))] = lines
    assert not offenders


def test_the_name_check_finds_a_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('x = 1 if kind == "text" else 2\ny = kind in ("image", "audio")\n')
    assert _comparisons_with_modality_names(bad) == [1, 2]


# --- a toy kind of data and a toy model, registered from here alone --------------------------------

@dataclass
class PointSamples(Samples):
    points: torch.Tensor  # (N, 2)
    formats: ClassVar[dict[str, str]] = {"csv": ".csv"}

    @property
    def count(self) -> int:
        return self.points.shape[0]

    def encode(self, fmt: str) -> bytes:
        return "".join(f"{x:.6f},{y:.6f}\n" for x, y in self.points.tolist()).encode()


class PointBatcher:
    def __init__(self, points: torch.Tensor, batch_size: int, seed: int) -> None:
        self.points, self.batch_size, self.seed = points, batch_size, seed
        self.steps_per_epoch = points.shape[0] // batch_size

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return {"points": self.points[torch.randint(len(self.points), (self.batch_size,),
                                                    generator=g)]}


class PointModality(Modality):
    """2-d points from `points:CSV`: a stand-in for a new kind of data (audio, video, ...)."""

    name = "points"
    feeds = "points"
    description = "2-d points: points:CSV"
    unit = "pt"
    samples_class = PointSamples
    stdout_format = "csv"

    def claims(self, spec: str) -> bool:
        return spec.startswith("points:")

    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        points = torch.from_numpy(np.loadtxt(spec[7:], delimiter=",", dtype=np.float32))
        return Prepared(PointBatcher(points, train.batch_size, train.seed), model_config,
                        {"name": spec, "n": len(points), "sha256": str(points.sum().item())})

    def generate(self, model: GenerativeModel, request: GenerationRequest) -> PointSamples:
        r = check_request(model, request, text=False)
        g = torch.Generator().manual_seed(r.seed)
        return PointSamples(model.sample(r.n, generator=g).detach())

    def write_training_samples(self, model: GenerativeModel, run_dir: Path, step: int,
                               seed: int) -> Path:
        path = run_dir / "samples" / f"step_{step:07d}.csv"
        return self.generate(model, GenerationRequest(n=8, seed=seed)).save(path)

    def evaluate_run(self, run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                     n: int, seed: int, data_dir: str | None, which: str,
                     feature_net: str | None, iwae_k: int, real: str | None,
                     command: str | None, sample_options: dict[str, Any]) -> dict[str, Any]:
        points = self.generate(model, GenerationRequest(n=n, seed=seed,
                                                        options=sample_options)).points
        return {"mean": points.mean(0).tolist(), "provenance": {"step": model.checkpoint_step}}

    def format_report(self, report: dict[str, Any]) -> str:
        return f"mean {report['mean']}"

    def tiny_data(self, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        np.savetxt(folder / "p.csv", rng.normal([3.0, -1.0], 0.1, (64, 2)), delimiter=",")
        return f"points:{folder / 'p.csv'}"

    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        assert samples.shape == (n, 2)

    def stream(self, model: GenerativeModel, request: GenerationRequest) -> Iterator[str]:
        yield from ()


@dataclass
class GaussianConfig:
    dim: int = 2  # the points' dimension

    def validate(self, *, partial: bool = False) -> None:
        pass


class Gaussian(GenerativeModel):
    """Fits a mean; samples mean + N(0, 0.1^2)."""

    name = "toy-gaussian"
    description = "a learned mean"
    config_class = GaussianConfig
    modality = "points"
    tiny_config = {"dim": 2}

    def __init__(self, config: GaussianConfig) -> None:
        super().__init__(config)
        self.mean = nn.Parameter(torch.zeros(config.dim))

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (batch["points"] - self.mean).square().sum(1).mean()}

    def sample(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        noise = torch.randn(n, self.config.dim, generator=generator)
        return self.mean.detach() + 0.1 * noise


@pytest.fixture
def toy_registered(monkeypatch) -> None:
    monkeypatch.setitem(MODALITIES, "points", PointModality())
    monkeypatch.setitem(MODELS, "toy-gaussian", Gaussian)


def test_a_new_modality_and_model_through_the_registries_alone(toy_registered, tmp_path: Path,
                                                               run_cli) -> None:
    spec = MODALITIES["points"].tiny_data(tmp_path / "data")
    run = genlab.train("toy-gaussian", spec, steps=60, batch_size=16, out=tmp_path / "run",
                       overrides={"train.lr": 0.2, "train.log_every": 10,
                                  "train.sample_every": 30, "train.checkpoint_every": 30})
    assert [r["step"] for r in run.metrics if "loss" in r] == [10, 20, 30, 40, 50, 60]
    assert run.metrics[-1]["loss"] < run.metrics[0]["loss"]
    assert (run.dir / "samples" / "step_0000030.csv").is_file()
    assert run.record["modality"] == "points"
    model = genlab.load(run.dir)
    assert model.modality == "points" and model.checkpoint_step == 60
    assert torch.allclose(model.mean, torch.tensor([3.0, -1.0]), atol=0.3)
    code, out, err = run_cli("sample", run.dir, "--n", "5", "--out", tmp_path / "s.csv")
    assert code == 0, err
    assert (tmp_path / "s.csv").read_text().count("\n") == 5
    assert (tmp_path / "s.csv").read_bytes() == genlab.generate(run.dir, n=5).encode("csv")
    code, out, err = run_cli("sample", run.dir, "--n", "3")  # stdout: the modality's format
    assert code == 0 and out.count("\n") == 3
    report = genlab.evaluate(run.dir, n=100)
    assert report["mean"][0] == pytest.approx(3.0, abs=0.3)
    code, out, err = run_cli("eval", run.dir, "--n", "10")
    assert code == 0 and out.startswith("mean ")
    code, _, err = run_cli("train", "dcgan", "--data", spec, "--steps", "1")
    assert code == 2 and "dcgan trains on images" in err


# --- the Python API --------------------------------------------------------------------------------

def test_train_and_evaluate_stay_functions_and_run_twice(tmp_path: Path, idx_spec: str) -> None:
    import genlab.evaluation
    import genlab.trainer

    assert callable(genlab.train) and callable(genlab.evaluate)
    tiny = {"model.ngf": 4, "model.ndf": 4, "model.nz": 8, "train.log_every": 1}
    runs = [genlab.train("dcgan", idx_spec, steps=2, batch_size=8, out=tmp_path / f"r{i}",
                         overrides=tiny, device="cpu") for i in range(2)]
    assert [r.metrics[-1]["step"] for r in runs] == [2, 2]
    assert runs[0].metrics[-1]["loss"] == runs[1].metrics[-1]["loss"]  # same seed
    reports = [genlab.evaluate(r, n=16, device="cpu", real="digits") for r in runs]
    assert reports[0]["fd"] == reports[1]["fd"] and reports[0]["provenance"]["step"] == 2
    assert (runs[1].dir / "eval.json").is_file()


def test_the_same_seed_gives_the_same_bytes_through_every_path(tiny_conditional_run: Path,
                                                               run_cli, tmp_path: Path) -> None:
    # the training grid of the last step, `genlab sample` and the API: one request, one result
    code, _, err = run_cli("sample", tiny_conditional_run, "--n", "64", "--seed", "0",
                           "--out", tmp_path / "cli.png")
    assert code == 0, err
    api = genlab.generate(tiny_conditional_run, n=64, seed=0).encode("png_grid")
    assert (tmp_path / "cli.png").read_bytes() == api
    assert (tiny_conditional_run / "samples.png").read_bytes() == api
    other = genlab.generate(tiny_conditional_run, n=64, seed=1).encode("png_grid")
    assert other != api


def test_request_errors_name_the_field_in_python_and_the_flag_on_the_command_line(
        tiny_run: Path, run_cli, tmp_path: Path) -> None:
    with pytest.raises(genlab.errors.UserError, match=r"^temperature is a text option"):
        genlab.generate(tiny_run, temperature=0.5)
    with pytest.raises(genlab.errors.UserError, match=r"^seed must be in 0\.\.9223372036854775807"):
        genlab.generate(tiny_run, seed=-1)
    code, _, err = run_cli("sample", tiny_run, "--temperature", "0.5", "--out", tmp_path / "x.png")
    assert code == 2 and "--temperature is a text option" in err
    assert not (tmp_path / "x.png").exists()


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_readme_python_blocks_run(tmp_path: Path, monkeypatch) -> None:
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks, "the README has a Python section"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
