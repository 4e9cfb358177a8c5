"""``crowdforge market export``: a registered version as a learnware zip, with its specification.

The zip is the ``learnware`` package's format (:mod:`crowdforge.market.learnware_package`); besides
the files a learnware market reads, it carries crowdforge's calibration of the RKME (``spec.json``)
and the semantic record, so ``crowdforge market search --zips DIR`` ranks zips exactly like
registered versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crowdforge.market.catalog import CROWDFORGE_SEMANTIC, Entry, SemanticSpec
from crowdforge.market.spec import RKME_FILE, SEMANTIC_FILE, SPEC_FILE, StatSpec, load_rkme


def export_learnware(params: Any, paths: Any, version_ref: str, out_zip: Path, model: str | None = None) -> Path:
    """Write ``out_zip`` for version ``version_ref`` (a number or an alias) of ``model`` (default
    ``register.model_name``). Raises ValueError when the version has no specification."""
    from mlflow import MlflowClient
    from safetensors.numpy import load_file

    from crowdforge.market.catalog import spec_folder
    from crowdforge.market.learnware_package import HEAD_FILE, write_learnware_zip
    from crowdforge.market.reuse import ensemble_dir
    from crowdforge.registry.tracking import connect
    from crowdforge.registry.versions import resolve_version

    connect(params, paths)
    client = MlflowClient()
    name = model or params.register.model_name
    mv = resolve_version(client, name, version_ref)
    semantic = SemanticSpec.from_tags(name, mv.tags)
    if semantic is None:
        raise ValueError(f"{name} version {mv.version} has no specification (registered with market.spec off, "
                         "or before specifications existed); register it again to get one")
    cache = paths.cache / "market"
    folder = spec_folder(mv.run_id, cache / "specs")
    head = load_file(str(folder / HEAD_FILE)) if (folder / HEAD_FILE).exists() else None
    stat = StatSpec.from_json(json.loads((folder / SPEC_FILE).read_text()))
    entry = Entry("registry", name, str(mv.version), semantic, None, stat, mv.run_id)
    return write_learnware_zip(
        ensemble_dir(entry, cache), folder / RKME_FILE, json.loads((folder / SEMANTIC_FILE).read_text()), out_zip,
        embedding_head=(head["weight"], head["bias"]) if head else None,
        extra={SPEC_FILE: (folder / SPEC_FILE).read_bytes(),
               CROWDFORGE_SEMANTIC: (folder / CROWDFORGE_SEMANTIC).read_bytes()})


def read_zip_entry(path: Path) -> Entry:
    """A learnware zip written by :func:`export_learnware` as a search entry."""
    import tempfile
    import zipfile

    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if SPEC_FILE not in names or CROWDFORGE_SEMANTIC not in names:
            raise ValueError(f"{path}: not exported by crowdforge (no {SPEC_FILE}): its RKME has no calibration to "
                             "judge distances by")
        record = json.loads(zf.read(CROWDFORGE_SEMANTIC))
        semantic = SemanticSpec(**{**record, "classes": tuple(record["classes"])})
        stat = StatSpec.from_json(json.loads(zf.read(SPEC_FILE)))
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / RKME_FILE).write_bytes(zf.read(RKME_FILE))
            rkme = load_rkme(Path(tmp) / RKME_FILE)
    return Entry(str(path), semantic.name, path.name, semantic, rkme, stat)
