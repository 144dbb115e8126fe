"""The layering of tinyvit (ARCHITECTURE.md), checked on the source: every import of every module,
the ones inside functions included, goes to the module's own layer or one below, and no chain of
imports comes back to where it started.

Function-level imports keep `import tinyvit` cheap, and they used to hide cycles (presets -> hub ->
convert -> presets); reading the files with `ast` sees them all, without importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import from its own layer and the ones before it.
LAYERS = {
    "kernels": ["tinyvit.kernels", "tinyvit.kernels._dispatch", "tinyvit.kernels.attention",
                "tinyvit.kernels.layernorm"],
    "models": ["tinyvit.errors", "tinyvit.checks", "tinyvit.token_learner", "tinyvit.vit_config", "tinyvit.vit", "tinyvit.fdvit", "tinyvit.resnet", "tinyvit.flops",
               "tinyvit.locality", "tinyvit.mae"],
    "files": ["tinyvit.atomic", "tinyvit.rundir"],
    "formats": ["tinyvit.preprocess", "tinyvit.presets", "tinyvit.checkpoint", "tinyvit.keymaps",
                "tinyvit.convert", "tinyvit.hub", "tinyvit.export"],
    "training": ["tinyvit.fractals", "tinyvit.data", "tinyvit.augment", "tinyvit.batches", "tinyvit.recipe", "tinyvit.freeze", "tinyvit.device", "tinyvit.sums", "tinyvit.evaluate", "tinyvit.processes",
                 "tinyvit.schedule", "tinyvit.report", "tinyvit.cache", "tinyvit.distill", "tinyvit.tasks", "tinyvit.fixmatch", "tinyvit.trainer"],
    "entry points": ["tinyvit.finetune", "tinyvit.study", "tinyvit.compare", "tinyvit.predict", "tinyvit.pretrain"],
    "public API": ["tinyvit"],
}
LAYER_OF = {m: i for i, names in enumerate(LAYERS.values()) for m in names}
LAYER_NAMES = list(LAYERS)


def module_files() -> dict[str, Path]:
    """Module name -> file, for tinyvit/ and tinyvit/kernels/."""
    out = {}
    for folder, package in ((ROOT / "tinyvit", "tinyvit"), (ROOT / "tinyvit" / "kernels", "tinyvit.kernels")):
        for path in sorted(folder.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every tinyvit module `name` imports, wherever the import statement stands."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # `from tinyvit import data` imports the module tinyvit.data; `from tinyvit.vit import X` tinyvit.vit.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # tinyvit.kernels.attention.attention -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def upward_imports(graph: dict[str, set[str]], layer_of: dict[str, int]) -> list[str]:
    return [f"{a} ({LAYER_NAMES[layer_of[a]]}) imports {b} ({LAYER_NAMES[layer_of[b]]})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of[b] > layer_of[a]]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    files = module_files()
    assert len(files) > 30, files  # the walk found the library (a wrong ROOT would pass everything)
    unplaced = sorted(set(files) - set(LAYER_OF))
    assert not unplaced, f"place these modules in a layer of LAYERS (and ARCHITECTURE.md): {unplaced}"
    gone = sorted(set(LAYER_OF) - set(files))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_no_module_imports_a_layer_above_it():
    graph = import_graph()
    # The walk sees function-level imports: these edges exist only inside functions.
    assert "tinyvit.convert" in graph["tinyvit.hub"]
    assert "tinyvit.flops" in graph["tinyvit.freeze"]
    assert "tinyvit.kernels._dispatch" in graph["tinyvit.kernels.attention"]  # relative imports resolve
    assert upward_imports(graph, LAYER_OF) == []


def test_no_import_cycles():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checks_catch_what_they_should():
    # The same functions on a made-up graph: an upward import and a cycle are found and named.
    graph = {"m.vit": {"m.convert"}, "m.convert": {"m.presets"}, "m.presets": {"m.hub"}, "m.hub": {"m.convert"}}
    layer_of = {"m.vit": 1, "m.convert": 3, "m.presets": 3, "m.hub": 3}
    assert upward_imports(graph, layer_of) == ["m.vit (models) imports m.convert (formats)"]
    assert find_cycle(graph) == ["m.convert", "m.presets", "m.hub", "m.convert"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", ["kernels", "models"])
def test_models_know_nothing_of_files_or_training(layer):
    # The bottom two layers import only from each other: no run directory, no format, no data.
    graph = import_graph()
    allowed = set(LAYERS["kernels"]) | set(LAYERS["models"])
    for name in LAYERS[layer]:
        assert graph[name] <= allowed, f"{name} imports {sorted(graph[name] - allowed)}"


# The model files. Everything else asks a model what it is (`model.arch`, `model.units()`, `model.set_image_size`, ...) instead of its class.
MODEL_FILES = {"vit.py", "resnet.py", "fdvit.py", "mae.py", "locality.py", "token_learner.py"}
MODEL_CLASSES = {"VisionTransformer", "ResNet", "FDViT", "MaskedAutoencoder"}


def class_branches(path: Path) -> list[str]:
    """Where `path` branches on a model's class: isinstance against a model class, an `is_vit`,
    a comparison of an `arch` attribute with a name, or hasattr(model, ...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 2:
            target = node.args[1]
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            if node.func.id == "isinstance" and any(isinstance(n, ast.Name) and n.id in MODEL_CLASSES for n in names):
                found.append(f"{path.name}:{node.lineno} isinstance against {ast.unparse(target)}")
            subject = node.args[0]
            if node.func.id == "hasattr" and "model" in ast.unparse(subject).lower():
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, (ast.Name, ast.Attribute)) and (getattr(node, "id", None) or getattr(node, "attr", None)) == "is_vit":
            found.append(f"{path.name}:{node.lineno} is_vit")
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "arch" \
                and any(isinstance(c, ast.Constant) for c in node.comparators):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_module_outside_the_models_branches_on_the_model_class():
    files = [p for p in sorted((ROOT / "tinyvit").glob("*.py")) if p.name not in MODEL_FILES]
    assert len(files) > 20, files
    found = [hit for path in files for hit in class_branches(path)]
    assert found == [], "ask the model (a member in vit.py, resnet.py, fdvit.py) instead:\n" + "\n".join(found)


def test_the_class_branch_scan_finds_each_kind(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("if isinstance(model, (ResNet, FDViT)): pass\nif self.is_vit: pass\n"
                    "if model.arch == 'vit': pass\nif hasattr(self.model, 'blocks'): pass\n"
                    "if isinstance(x, dict) or model.arch in TABLE: pass\n")
    assert [hit.split()[0] for hit in class_branches(path)] == ["bad.py:1", "bad.py:2", "bad.py:3", "bad.py:4"]
