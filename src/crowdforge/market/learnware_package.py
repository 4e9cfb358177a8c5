"""A shipped ensemble as a zip that the ``learnware`` package's markets (and the Beimingwu dock) load.

Zip layout (the package's format: ``learnware.yaml`` is the index)::

    learnware.yaml                 model class + kwargs, the statistical specification, the semantic file
    __init__.py                    ``CrowdforgeLearnware(learnware.model.BaseModel)``, generated below
    rkme.json                      RKMETableSpecification.save() JSON over the shared feature space
    semantic_specification.json    what LearnwareClient.load_learnware reads for the semantic spec
    ensemble/                      the crowdforge ensemble folder (crowdforge.modeling.inference)
    embedding_head.safetensors     optional: {"weight": (C, D), "bias": (C,)} on the feature space
    code/crowdforge/               crowdforge's source, as MLflow's ``code_paths`` ships it
    requirements.txt               pinned pip requirements (the versions installed at export)
    environment.yaml               the same pins plus this Python: conda picks it over requirements.txt,
                                   whose default interpreter (3.8) cannot install today's torch

What the learnware package does with it (read from learnware 0.4.0.post1):

* ``get_learnware_from_dirpath`` reads only ``learnware.yaml`` (``name``, ``model``: ``class_name``,
  ``module_path`` defaulting to ``__init__.py``, ``kwargs``; ``stat_specifications``: module,
  class, file, kwargs) and loads each specification with ``cls(**kwargs).load(file)``. It never
  runs the model; extra keys are ignored.
* ``EasySemanticChecker`` checks Data/Task/Library/License (one allowed value each), Scenario
  (allowed tags), non-empty Name/Description and, for classification, an ``Output`` of dimension
  > 1 keyed ``"0".."C-1"``. ``Input`` is only checked for table data.
* ``EasyStatChecker`` (the easy market's; wrapped in ``CondaChecker`` it is
  ``LearnwareClient.check_learnware``, the check the dock's docs ask for before an upload)
  dispatches on the *statistical specification's type*, not on ``Data``. For an ``RKMETableSpecification`` it requires
  ``model.input_shape == z.shape[1:]`` (here ``(384,)``) and calls ``predict(np.random.randn(10,
  384))``: Gaussian vectors, neither texts nor the herded reduced-set points; the output must be an
  array of 10 rows of shape ``output_shape == (C,)`` with ``C`` the ``Output`` dimension. Random
  strings are fed only to ``RKMETextSpecification`` learnwares, and that type means embeddings of
  paraphrase-multilingual-MiniLM-L12-v2 (``RKMETextSpecification.get_sentence_embedding``), a
  different space from ours, so claiming it would make dock searches compare incomparable vectors.
  ``JobSelectorReuser`` likewise passes table-spec learnwares the user's numeric data (vectors of
  the specification's space) and refuses strings unless the specification is RKMETextSpecification.

So the model accepts both kinds of input, and the specification stays an honest
``RKMETableSpecification`` of :mod:`crowdforge.market.features` vectors: raw texts (a list, or a 1-D
or ``(n, 1)`` array of strings) get the ensemble's exact probabilities; an ``(n, D)`` float array is
read as embeddings of that space and goes through ``embedding_head.safetensors``, a softmax
regression distilled from the ensemble (:func:`fit_embedding_head`), an approximation whose
fidelity the exporter should measure. A zip written without a head predicts texts only; markets'
stat checkers then reject it (its ``predict`` raises on vectors), crowdforge's own search does not.

The ``learnware`` import is lazy everywhere (it takes ~15 s) and goes through
:func:`crowdforge.market.learnware_home.import_learnware`, which keeps the package's files out of
``~/.learnware``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crowdforge.market.learnware_home import import_learnware
from crowdforge.market.spec import RKME_FILE, SEMANTIC_FILE

MODEL_CLASS = "CrowdforgeLearnware"
HEAD_FILE = "embedding_head.safetensors"
ENSEMBLE_DIR = "ensemble"
CODE_DIR = "code"
#: What ``crowdforge.modeling.inference`` imports (torch, transformers, numpy, pandas, scikit-learn and
#: skops for the pair members, safetensors for the heads): pinned to the versions installed at export.
REQUIREMENTS = ("torch", "transformers", "numpy", "pandas", "scikit-learn", "skops", "safetensors")
#: Zip entries get this timestamp, so the same inputs give the same bytes (reproducible exports).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_STORED = {".safetensors", ".bin", ".skops", ".pt", ".onnx"}  # already dense: deflate gains nothing
_LANGUAGE = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})*$", re.IGNORECASE)

_WRAPPER_SOURCE = '''"""A crowdforge ensemble as a learnware model (written by crowdforge.market.learnware_package).

predict(X) takes texts (a list of strings, or a 1-D or (n, 1) array of strings) and returns the
ensemble's class probabilities (n, C). An (n, D) float array is read as embeddings in the statistical
specification's space (mean-pooled all-MiniLM-L6-v2, put on the unit sphere here) and goes through
embedding_head.safetensors, a softmax regression distilled from the ensemble: an approximation, there
because the learnware package feeds RKMETableSpecification learnwares vectors of that space.
"""

import os
import sys

import numpy as np
import pandas as pd
from learnware.model import BaseModel

_HERE = os.path.dirname(os.path.abspath(__file__))
_CODE = os.path.join(_HERE, "code")
if _CODE not in sys.path:  # crowdforge need not be installed (a crowdforge imported already wins)
    sys.path.insert(0, _CODE)

from crowdforge.modeling.inference import PRECISION_ENV, load_ensemble, softmax  # noqa: E402


def _text(x):
    if isinstance(x, str):
        return x
    return "" if x is None or (np.ndim(x) == 0 and pd.isna(x)) else str(x)


class CrowdforgeLearnware(BaseModel):
    def __init__(self, embedding_dim=384):
        self.ensemble = load_ensemble(os.path.join(_HERE, "ensemble"), os.environ.get(PRECISION_ENV) or "fp32")
        self.head = None
        head = os.path.join(_HERE, "embedding_head.safetensors")
        if os.path.exists(head):
            from safetensors.numpy import load_file

            self.head = load_file(head)
        super().__init__(input_shape=(int(embedding_dim),), output_shape=(len(self.ensemble.classes),))

    def predict(self, X):
        if hasattr(X, "detach"):  # torch tensor
            X = X.detach().cpu().numpy()
        if hasattr(X, "to_numpy"):  # pandas Series or DataFrame
            X = X.to_numpy()
        if not (isinstance(X, np.ndarray) and X.dtype.kind in "biuf"):
            items = np.asarray(X, dtype=object)
            if items.ndim == 2 and items.shape[1] == 1:
                items = items[:, 0]
            if items.ndim == 1 and (len(items) == 0 or any(isinstance(x, str) for x in items)):
                return self.ensemble.predict_proba([_text(x) for x in items])
        try:
            vectors = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError):
            vectors = None
        if vectors is None or vectors.ndim != 2 or vectors.shape[1] != self.input_shape[0]:
            raise ValueError(f"expected texts (one per row) or an (n, {self.input_shape[0]}) array of embeddings, "
                             f"got {type(X).__name__} of shape {'?' if vectors is None else vectors.shape}")
        if self.head is None:
            raise TypeError("this learnware was exported without an embedding head: pass raw texts")
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return softmax(vectors @ self.head["weight"].T.astype(np.float64) + self.head["bias"].astype(np.float64))

    def fit(self, X, y):
        raise NotImplementedError("a crowdforge ensemble is trained by the crowdforge pipeline, not here")

    def finetune(self, X, y):
        raise NotImplementedError("fine-tune with the crowdforge pipeline (crowdforge run) and export again")
'''


# --- the learnware package's files --------------------------------------------------------------
def _semantic_config() -> dict[str, Any]:
    """The installed package's allowed semantic values (``C["semantic_specs"]``).

    Read from ``learnware/config.py`` alone when the package is not imported yet: that file has no
    imports of its own, whereas ``import learnware`` imports torch and creates ``~/.learnware``.
    """
    module = sys.modules.get("learnware.config")
    if module is None:
        found = importlib.util.find_spec("learnware")  # locates the package without executing it
        if found is None or not found.submodule_search_locations:
            raise ModuleNotFoundError("the learnware package is not installed")
        path = Path(next(iter(found.submodule_search_locations))) / "config.py"
        spec = importlib.util.spec_from_file_location("_crowdforge_learnware_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.C["semantic_specs"]


def _allowed(config: dict[str, Any], key: str, value: str, field_name: str) -> str:
    """``value`` spelt as the package spells it (case-insensitive match), or a ValueError naming the field."""
    allowed = config[key]["Values"]
    match = {v.lower(): v for v in allowed}.get(str(value).strip().lower())
    if match is None:
        raise ValueError(f"{field_name + ': ' if field_name else ''}{value!r} is not one of the learnware "
                         f"package's {key} values: {', '.join(allowed)}")
    return match


def allowed_value(key: str, value: str, field_name: str) -> str:
    """``value`` as the installed package spells its ``key`` values (``Scenario``, ``License``, ...), or a
    ValueError naming ``field_name`` and the allowed values (what params.yaml checks at load)."""
    return _allowed(_semantic_config(), key, value, field_name)


# --- the semantic specification ----------------------------------------------------------------
def learnware_semantic_spec(
    name: str,
    description: str,
    classes: Sequence[str],
    domain: str | Sequence[str],
    licence: str,
    language: str,
) -> dict[str, Any]:
    """The semantic specification of a crowdforge text classifier, in the package's dict format.

    Data Text, Task Classification, Library PyTorch, Model Others; ``domain`` is one or more of the
    package's Scenario tags and ``licence`` one of its License values (matched case-insensitively);
    ``Output`` names the classes in the order of the model's probability columns and ``Input`` says
    what ``predict`` takes (``language`` is an ISO 639 code such as ``en``; the package has no field
    for it). Every field is validated against the installed package's allowed values, so a bad one
    fails here with a ValueError naming it instead of as a rejected upload.
    """
    config = _semantic_config()
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name: must be a non-empty string")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("description: must be a non-empty string")
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
        raise ValueError(f"classes: need at least two distinct non-empty class names, got {classes}")
    domains = [domain] if isinstance(domain, str) else list(domain)
    if not domains:
        raise ValueError("domain: give at least one Scenario")
    scenarios = list(dict.fromkeys(_allowed(config, "Scenario", d, "domain") for d in domains))
    licence = _allowed(config, "License", licence, "licence")
    if not isinstance(language, str) or not _LANGUAGE.match(language):
        raise ValueError(f"language: {language!r} is not an ISO 639 language code such as 'en' or 'pt-br'")
    spec = {
        "Data": {"Type": "Class", "Values": [_allowed(config, "Data", "Text", "Data")]},
        "Task": {"Type": "Class", "Values": [_allowed(config, "Task", "Classification", "Task")]},
        "Model": {"Type": "Optional", "Values": [_allowed(config, "Model", "Others", "Model")]},
        "Library": {"Type": "Class", "Values": [_allowed(config, "Library", "PyTorch", "Library")]},
        "License": {"Type": "Class", "Values": [licence]},
        "Scenario": {"Type": "Tag", "Values": scenarios},
        "Name": {"Type": "String", "Values": name.strip()},
        "Description": {"Type": "String", "Values": description.strip()},
        "Input": {"Dimension": 1, "Description": {
            "0": f"one text per item ({language.lower()}); or the item's mean-pooled, L2-normalised "
                 "all-MiniLM-L6-v2 embedding (the statistical specification's space)"}},
        "Output": {"Dimension": len(classes),
                   "Description": {str(i): f"probability of class {c!r}" for i, c in enumerate(classes)}},
    }
    return spec


# --- the embedding head ------------------------------------------------------------------------
def fit_embedding_head(
    embeddings: np.ndarray, probs: np.ndarray, l2: float = 1e-3, max_iter: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Distil the ensemble onto the feature space: a softmax regression ``(weight (C, D), bias (C,))``.

    ``embeddings`` are :func:`crowdforge.market.features.embed` vectors of texts and ``probs`` the
    ensemble's probabilities for the same texts (the training texts the RKME was made from are the
    natural choice); the fit minimises the cross-entropy to those soft labels plus ``l2/2 |W|^2``
    with L-BFGS. Rows are put on the unit sphere first, as the packaged model does at prediction.
    """
    import torch

    x = np.asarray(embeddings, dtype=np.float64)
    t = np.asarray(probs, dtype=np.float64)
    if x.ndim != 2 or t.ndim != 2 or len(x) != len(t) or not len(x):
        raise ValueError(f"need (n, D) embeddings and (n, C) probabilities, got {x.shape} and {t.shape}")
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t / t.sum(1, keepdims=True))
    weight = torch.zeros((t.shape[1], x.shape[1]), dtype=torch.float64, requires_grad=True)
    bias = torch.log(tt.mean(0).clamp(min=1e-12)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logp = torch.log_softmax(xt @ weight.T + bias, dim=1)
        loss = -(tt * logp).sum(1).mean() + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach().numpy().astype(np.float32), bias.detach().numpy().astype(np.float32)


# --- writing ------------------------------------------------------------------------------------
def _requirements() -> list[str]:
    """``name==version`` of :data:`REQUIREMENTS` as installed; a local label (``+cpu``) is dropped,
    because PyPI has no such file (torch's CPU wheels live on its own index)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def _rkme_dim(rkme_json: Path) -> int:
    """The feature dimension of a saved RKMETableSpecification (read as JSON: no learnware import)."""
    state = json.loads(Path(rkme_json).read_text(encoding="utf-8"))
    if state.get("type") != "RKMETableSpecification":
        raise ValueError(f"{rkme_json}: not an RKMETableSpecification JSON (type={state.get('type')!r})")
    z = np.asarray(state["z"], dtype=np.float64)
    if z.ndim != 2 or not len(z):
        raise ValueError(f"{rkme_json}: reduced set z must be (K, D), got shape {z.shape}")
    return int(z.shape[1])


def _info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED if Path(arcname).suffix in _STORED else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _add(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    zf.writestr(_info(arcname), data)


def _add_tree(zf: zipfile.ZipFile, folder: Path, prefix: str) -> None:
    """Every file under ``folder`` (no bytecode), streamed: encoder weights need not fit in memory twice."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            info = _info(f"{prefix}/{path.relative_to(folder).as_posix()}")
            info.file_size = path.stat().st_size  # lets zipfile choose zip64 for huge files up front
            with path.open("rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def write_learnware_zip(
    ensemble_dir: Path,
    rkme_json: Path,
    semantic_spec: dict[str, Any],
    out_zip: Path,
    embedding_head: tuple[np.ndarray, np.ndarray] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Write the learnware zip of an ensemble folder (layout in the module docstring); returns ``out_zip``.

    ``rkme_json`` is the ensemble's RKMETableSpecification over the shared feature space and
    ``semantic_spec`` usually :func:`learnware_semantic_spec`'s; its ``Output`` must list the
    ensemble's classes. ``embedding_head`` (:func:`fit_embedding_head`) lets ``predict`` take
    vectors of that space, which markets' stat checkers require. ``extra`` files (name -> bytes) go to the
    zip's top level (crowdforge's own search reads its calibration from them). The zip is written to a temporary
    file beside ``out_zip`` and moved into place, so readers never see half a package.
    """
    import crowdforge

    ensemble_dir, rkme_json, out_zip = Path(ensemble_dir), Path(rkme_json), Path(out_zip)
    index = json.loads((ensemble_dir / "ensemble.json").read_text(encoding="utf-8"))
    classes = list(index["classes"])
    output = semantic_spec.get("Output") or {}
    described = [str(output.get("Description", {}).get(str(i), "")) for i in range(len(classes))]
    if int(output.get("Dimension", -1)) != len(classes) or not all(c in d for c, d in zip(classes, described)):
        raise ValueError(f"semantic_spec Output must describe the ensemble's {len(classes)} classes {classes} "
                         f"in order (the checker compares it with the model's output), got {output}")
    dim = _rkme_dim(rkme_json)
    head_bytes = None
    if embedding_head is not None:
        from safetensors.numpy import save

        weight, bias = (np.ascontiguousarray(a, dtype=np.float32) for a in embedding_head)
        if weight.shape != (len(classes), dim) or bias.shape != (len(classes),):
            raise ValueError(f"embedding head must be ({len(classes)}, {dim}) + ({len(classes)},), "
                             f"got {weight.shape} + {bias.shape}")
        head_bytes = save({"weight": weight, "bias": bias})

    name = str(semantic_spec.get("Name", {}).get("Values") or index.get("name") or "crowdforge ensemble")
    learnware_yaml = {
        "name": name,
        "model": {"class_name": MODEL_CLASS, "module_path": "__init__.py", "kwargs": {"embedding_dim": dim}},
        "stat_specifications": [{"module_path": "learnware.specification", "class_name": "RKMETableSpecification",
                                 "file_name": RKME_FILE, "kwargs": {}}],
        "semantic_specification": {"file_name": SEMANTIC_FILE},
    }
    requirements = _requirements()
    environment = {"name": "crowdforge-learnware",
                   "dependencies": [f"python={sys.version_info.major}.{sys.version_info.minor}", "pip",
                                    {"pip": requirements}]}

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_zip.name}.", suffix=".tmp", dir=out_zip.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
            _add(zf, "learnware.yaml", yaml.safe_dump(learnware_yaml, sort_keys=False).encode("utf-8"))
            _add(zf, "__init__.py", _WRAPPER_SOURCE.encode("utf-8"))
            _add(zf, RKME_FILE, rkme_json.read_bytes())
            _add(zf, SEMANTIC_FILE, json.dumps(semantic_spec, indent=2, ensure_ascii=False).encode("utf-8"))
            _add(zf, "requirements.txt", ("\n".join(requirements) + "\n").encode("utf-8"))
            _add(zf, "environment.yaml", yaml.safe_dump(environment, sort_keys=False).encode("utf-8"))
            if head_bytes is not None:
                _add(zf, HEAD_FILE, head_bytes)
            for arcname, data in sorted((extra or {}).items()):
                _add(zf, arcname, data)
            _add_tree(zf, ensemble_dir, ENSEMBLE_DIR)
            _add_tree(zf, Path(crowdforge.__file__).resolve().parent, f"{CODE_DIR}/crowdforge")
        os.replace(tmp, out_zip)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_zip


# --- reading ------------------------------------------------------------------------------------
@dataclass
class LearnwarePackage:
    """A learnware zip read for crowdforge's search: the light parts at once, the heavy ones on demand."""

    path: Path
    name: str
    semantic_spec: dict[str, Any]
    classes: list[str]
    rkme_file: str
    has_embedding_head: bool
    _workdir: Any = field(default=None, init=False, repr=False)

    def rkme(self) -> Any:
        """The RKMETableSpecification (imports ``learnware.specification``: ~15 s the first time)."""
        import_learnware()
        from learnware.specification import RKMETableSpecification

        with zipfile.ZipFile(self.path) as zf, tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "rkme.json"
            file.write_bytes(zf.read(self.rkme_file))
            spec = RKMETableSpecification(cuda_idx=-1)
            spec.load(str(file))
        return spec

    def ensemble(self, precision: str = "fp32") -> Any:
        """The packaged ensemble (its folder is unpacked into a temporary directory this object owns);
        ``.predict_proba(texts)`` gives the class probabilities."""
        from crowdforge.modeling.inference import load_ensemble

        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="crowdforge-learnware-")
            with zipfile.ZipFile(self.path) as zf:
                zf.extractall(self._workdir.name, [n for n in zf.namelist() if n.startswith(f"{ENSEMBLE_DIR}/")])
        return load_ensemble(Path(self._workdir.name) / ENSEMBLE_DIR, precision)


def load_learnware_zip(zip_path: str | Path) -> LearnwarePackage:
    """Read a zip written by :func:`write_learnware_zip` (or any learnware whose model is a crowdforge
    ensemble) without importing the learnware package: ``learnware.yaml``, the semantic
    specification and the class names; the RKME and the ensemble load on demand."""
    path = Path(zip_path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        config = yaml.safe_load(io.TextIOWrapper(zf.open("learnware.yaml"), encoding="utf-8"))
        rkme = [s["file_name"] for s in config.get("stat_specifications", [])
                if s.get("class_name") == "RKMETableSpecification"]
        if not rkme:
            raise ValueError(f"{path}: learnware.yaml names no RKMETableSpecification")
        semantic_file = (config.get("semantic_specification") or {}).get("file_name")
        semantic = json.loads(zf.read(semantic_file)) if semantic_file in names else {}
        index = json.loads(zf.read(f"{ENSEMBLE_DIR}/ensemble.json"))
    name = str(config.get("name") or (semantic.get("Name") or {}).get("Values") or path.stem)
    return LearnwarePackage(path, name, semantic, list(index["classes"]), rkme[0], HEAD_FILE in names)
