"""`opcircuits run`: the experiment as a chain of stages that can be trusted, repeated, resumed.

Each stage declares its inputs (files or directories, hashed; or plain identity strings), its
options and its outputs. After a stage succeeds, the run writes `stages/<name>.json` (atomically,
last): the inputs' and outputs' sha256 and the options. On the next run a stage is skipped when
that record exists, its inputs and options are unchanged and its outputs still hash to the
recorded values; otherwise it recomputes. Before a stage runs, `stages/<name>.started.json`
records what it is about to compute, so after a crash or kill the next run knows whether a
partial output (a half-extracted store) belongs to the same computation and may be resumed, or to
an older one and must be cleared.

Run directory layout (see README "One command: opcircuits run"):

    config.resolved.toml   every option, re-usable as --config
    run.json               command, versions, seeds, status and per-stage outcome
    run.log                timestamped log of every invocation (appended)
    data/                  gsm8k_full.jsonl, operation_samples_*.jsonl (+ manifests)
    store/                 the thought store (unless --store puts it elsewhere)
    analysis/              analysis_report.json, ANALYSIS_SUMMARY.md, report.html, figures
    stages/                one record per completed stage
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from opcircuits.config import ResolvedConfig
from opcircuits.errors import OpcircuitsError
from opcircuits.files import manifest_path, sha256_file, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

STAGE_RECORD_VERSION = 1
ANALYSIS_DIR = "analysis"
STORE_DIR = "store"
DATA_DIR = "data"
STAGES_DIR = "stages"
HASH_CACHE = ".hashcache.json"
# Options that change how fast a stage runs, never what it writes: not part of its key.
BATCH_ONLY = ("batch_size",)
JOBS_ONLY = ("jobs",)
VERSIONED = (
    "opcircuits",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
)


class StageError(OpcircuitsError):
    """A stage failed; the message names the stage and the cause."""

    def __init__(self, stage: str, cause: BaseException, log_file: Path | None = None) -> None:
        self.stage = stage
        if isinstance(cause, OpcircuitsError):
            why = str(cause)
        else:
            why = f"{type(cause).__name__}: {cause}"
            if log_file is not None:
                why += f" (traceback in {log_file})"
        super().__init__(f"stage '{stage}' failed: {why}")


# --- hashing -----------------------------------------------------------------------------------


class Hasher:
    """sha256 of files and directory trees, cached by (path, size, mtime) across invocations.

    Re-hashing a multi-GB local checkpoint on every run would cost seconds; a file whose size and
    modification time are unchanged is taken to be unchanged (as make and rsync do).
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self.cache_file = cache_file
        self.cache: dict[str, list[Any]] = {}
        if cache_file is not None and cache_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                loaded = json.loads(cache_file.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.cache = loaded
        self._dirty = False

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.cache.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(path)
        self.cache[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest

    def tree(self, path: Path) -> str:
        """One digest over a directory's files (relative names + contents); dotfiles (temporary
        files of an interrupted write) are ignored."""
        h = hashlib.sha256()
        for f in sorted(_tree_files(path)):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            h.update(self.file(f).encode())
            h.update(b"\n")
        return h.hexdigest()

    def any(self, path: Path) -> str:
        if path.is_dir():
            return self.tree(path)
        if path.is_file():
            return self.file(path)
        raise FileNotFoundError(path)

    def save(self) -> None:
        if self.cache_file is not None and self._dirty:
            with contextlib.suppress(OSError):
                write_json_atomic(self.cache_file, self.cache)
            self._dirty = False


def _tree_files(path: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(root) / name


# --- stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One step of the run. `inputs` values are paths (hashed) or identity strings (compared as is).
    `owned` outputs belong to the run directory and are cleared when the stage must recompute."""

    name: str
    action: Callable[[], Any]
    inputs: dict[str, Path | str]
    options: dict[str, Any]
    outputs: dict[str, Path]
    owned: list[Path] = field(default_factory=list)
    optional_outputs: dict[str, Path] = field(default_factory=dict)  # hashed when present
    # Recorded, not compared: options the results do not depend on.
    settings: dict[str, Any] = field(default_factory=dict)
    reuse_any: bool = False  # skip whenever the recorded outputs are intact, whatever the key
    on_force: Callable[[], None] | None = None  # clears outputs that are not owned, for --force


@dataclass
class RunResult:
    run_dir: Path
    mode: str
    stages: list[tuple[str, str]]  # (name, "ran" | "skipped")
    analysis_dir: Path
    report: dict[str, Any]
    headline: list[str]

    @property
    def report_html(self) -> Path:
        return self.analysis_dir / "report.html"

    @property
    def summary_md(self) -> Path:
        return self.analysis_dir / "ANALYSIS_SUMMARY.md"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return value


def _rel(path: Path, run_dir: Path) -> str:
    """Paths inside the run directory are recorded relative to it, so the directory can move."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


class StageRunner:
    def __init__(
        self, run_dir: Path, hasher: Hasher, force: bool, file_handler: logging.Handler | None
    ):
        self.run_dir = run_dir
        self.records = run_dir / STAGES_DIR
        self.hasher = hasher
        self.force = force
        self.file_handler = file_handler
        self.outcomes: list[tuple[str, str]] = []

    def _input_digests(self, stage: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in stage.inputs.items():
            if isinstance(value, Path):
                if not value.exists():
                    raise StageError(stage.name, OpcircuitsError("input not found", path=value))
                out[name] = {"path": _rel(value, self.run_dir), "sha256": self.hasher.any(value)}
            else:
                out[name] = {"id": value}
        return out

    def _output_digests(self, stage: Stage) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, path in stage.outputs.items():
            if not path.exists():
                raise StageError(
                    stage.name, OpcircuitsError("stage finished without its output", path=path)
                )
            out[name] = {"path": _rel(path, self.run_dir), "sha256": self.hasher.any(path)}
        for name, path in stage.optional_outputs.items():
            if path.exists():
                out[name] = {"path": _rel(path, self.run_dir), "sha256": self.hasher.any(path)}
        return out

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _up_to_date(
        self, record: dict[str, Any] | None, key: dict[str, Any], any_key: bool = False
    ) -> bool:
        if record is None or (record.get("key") != key and not any_key):
            return False
        for entry in record.get("outputs", {}).values():
            path = Path(entry["path"])
            path = path if path.is_absolute() else self.run_dir / path
            if not path.exists() or self.hasher.any(path) != entry["sha256"]:
                return False
        return True

    def run(self, stage: Stage, index: int, total: int) -> None:
        done_file = self.records / f"{stage.name}.json"
        started_file = self.records / f"{stage.name}.started.json"
        key = {
            "version": STAGE_RECORD_VERSION,
            "inputs": self._input_digests(stage),
            "options": _jsonable(stage.options),
        }
        done = self._read(done_file)
        if not self.force and self._up_to_date(done, key, stage.reuse_any):
            log.info("[%d/%d] %s: up to date, skipped", index, total, stage.name)
            self.outcomes.append((stage.name, "skipped"))
            return

        started = self._read(started_file)
        stale = self.force or (started is not None and started.get("key") != key)
        stale = stale or (done is not None and done.get("key") != key)
        if stale:
            for path in stage.owned:
                _remove(path)
        if self.force and stage.on_force is not None:
            stage.on_force()
        elif started is not None:
            log.info("[%d/%d] %s: resuming an interrupted run", index, total, stage.name)
        done_file.unlink(missing_ok=True)
        write_json_atomic(started_file, {"stage": stage.name, "key": key, "started": _now()})

        log.info("[%d/%d] %s ...", index, total, stage.name)
        try:
            stage.action()
        except (KeyboardInterrupt, StageError):
            raise
        except OpcircuitsError as exc:
            raise StageError(stage.name, exc) from exc
        except Exception as exc:
            self._trace(stage.name, exc)
            raise StageError(stage.name, exc, self.run_dir / "run.log") from exc

        record = {
            "stage": stage.name,
            "key": key,
            "settings": _jsonable(stage.settings),
            "outputs": self._output_digests(stage),
            "finished": _now(),
        }
        write_json_atomic(done_file, record)  # last: only now may a later run trust the outputs
        started_file.unlink(missing_ok=True)
        self.hasher.save()
        self.outcomes.append((stage.name, "ran"))

    def _trace(self, stage: str, exc: BaseException) -> None:
        """An unexpected failure's traceback goes to run.log only; the console gets one line."""
        if self.file_handler is not None:
            trace = "".join(traceback.format_exception(exc))
            _file_only(self.file_handler, logging.ERROR, f"stage '{stage}' crashed:\n{trace}")


def _file_only(handler: logging.Handler, level: int, message: str) -> None:
    handler.handle(log.makeRecord(log.name, level, __file__, 0, message, (), None))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the run directory -------------------------------------------------------------------------


def default_out(mode: str) -> Path:
    return Path("runs") / mode


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory and prove it is writable, or fail with a clear message."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OpcircuitsError(
            f"cannot write the run directory ({reason}); pass --out with a writable folder",
            path=path,
        ) from exc
    return path


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """One run per directory at a time. The OS drops the lock when the process dies (even -9)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run unguarded
        yield
        return
    with open(run_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OpcircuitsError(
                "another `opcircuits run` is using this run directory; "
                "wait for it or pick another --out",
                path=run_dir,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _log_file(run_dir: Path) -> Iterator[logging.Handler]:
    """Everything the package logs during the run also goes, timestamped, to run.log."""
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg = logging.getLogger("opcircuits")
    old_level = pkg.level
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield handler
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)
        handler.close()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


# --- building the stages -----------------------------------------------------------------------


def _make(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a stage's options dataclass from the values it declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _local(value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return path if path.exists() else None


def model_inputs(extract: dict[str, Any]) -> dict[str, Path | str]:
    """What identifies the model's weights: local checkpoint/base folders are hashed (a retrained
    checkpoint in the same folder recomputes), hub ids are compared by name."""
    from opcircuits.codi.config import PRESETS

    model = extract.get("model")
    checkpoint = extract.get("checkpoint")
    base = extract.get("base")
    inputs: dict[str, Path | str] = {"model": str(model)}
    if checkpoint is None and model in PRESETS:
        checkpoint = PRESETS[model].checkpoint
    elif checkpoint is None:
        checkpoint = model
    inputs["checkpoint"] = _local(checkpoint) or f"hub:{checkpoint}"
    if base is not None:
        inputs["base"] = _local(base) or f"hub:{base}"
    return inputs


def _is_inside(path: Path, parent: Path) -> bool:
    return path.resolve().is_relative_to(parent.resolve())


def build_stages(config: ResolvedConfig, run_dir: Path) -> tuple[list[Stage], Path, Path]:
    """The stages of this mode, the store they read or write, and the analysis directory."""
    from opcircuits.analysis.analyze import AnalyzeOptions

    t = config.tables
    mode = config.mode
    store_opt = t["run"]["store"]
    analysis_dir = run_dir / ANALYSIS_DIR
    stages: list[Stage] = []

    if mode == "analysis_only":
        if store_opt is None:
            raise OpcircuitsError(
                "analysis_only needs --store: a store directory or a legacy "
                "continuous_thoughts_*.json",
                field="run.store",
            )
        given = Path(store_opt)
        if given.is_file():
            store = run_dir / STORE_DIR
            stages.append(_import_stage(given, store))
        elif (given / "manifest.json").is_file():
            store = given
        elif given.is_dir():
            raise OpcircuitsError(
                "not a thought store (no manifest.json)", path=given, field="run.store"
            )
        else:
            raise OpcircuitsError("store not found", path=given, field="run.store")
    else:
        data_dir = run_dir / DATA_DIR
        dataset = _data_stages(t["data"], data_dir, mode, stages)
        store = Path(store_opt) if store_opt is not None else run_dir / STORE_DIR
        stages.append(_extract_stage(t["extract"], dataset, store, run_dir))

    stages.append(
        _analyze_stage(_make(AnalyzeOptions, t["analyze"]), t["analyze"], store, analysis_dir)
    )
    return stages, store, analysis_dir


def _data_stages(data: dict[str, Any], data_dir: Path, mode: str, stages: list[Stage]) -> Path:
    from opcircuits.data import gsm8k
    from opcircuits.data.sampling import (
        CATEGORIES,
        ClassifyOptions,
        PrototypeOptions,
        classify,
        prototype,
    )

    full = data_dir / "gsm8k_full.jsonl"
    source = str(data["source"])
    src_dir = None if source == "hf" else Path(source).expanduser()
    if src_dir is not None and not src_dir.is_dir():
        raise OpcircuitsError(
            "--source must be 'hf' or a folder holding GSM8K's train.jsonl and test.jsonl",
            path=src_dir,
            field="data.source",
        )
    stages.append(
        Stage(
            name="download",
            action=lambda: gsm8k.download(
                source=source if src_dir is None else str(src_dir), out=full
            ),
            inputs={"source": src_dir if src_dir is not None else "hf"},
            options={},
            outputs={"problems": full},
            optional_outputs={"manifest": manifest_path(full)},
            # "hf" means the canonical GSM8K: download only if missing, so a run first made from
            # a local copy is not sent to the (maybe unreachable) hub on its next invocation.
            # A local folder is hashed: changed files there recompute.
            reuse_any=src_dir is None,
        )
    )

    classify_values = {
        k: v for k, v in data.items() if not k.startswith("prototype_") and k != "source"
    }
    samples = data_dir / f"operation_samples_{classify_values.get('per_category', 200)}.jsonl"
    classify_opts = _make(ClassifyOptions, {**classify_values, "in_path": full, "out": samples})
    stages.append(
        Stage(
            name="classify",
            action=lambda: classify(classify_opts),
            inputs={"problems": full},
            options=classify_values,
            outputs={"samples": samples},
            optional_outputs={"manifest": manifest_path(samples)},
        )
    )
    if mode == "full":
        return samples

    proto_values = {
        k[len("prototype_") :]: v for k, v in data.items() if k.startswith("prototype_")
    }
    proto_values["seed"] = data.get("seed")
    n_subset = len(CATEGORIES) * int(proto_values.get("per_category", 20))
    subset = data_dir / f"operation_samples_prototype_{n_subset}.jsonl"
    proto_opts = _make(PrototypeOptions, {**proto_values, "in_path": samples, "out": subset})
    stages.append(
        Stage(
            name="prototype",
            action=lambda: prototype(proto_opts),
            inputs={"samples": samples},
            options=proto_values,
            outputs={"subset": subset},
            optional_outputs={"manifest": manifest_path(subset)},
        )
    )
    return subset


def _extract_stage(values: dict[str, Any], dataset: Path, store: Path, run_dir: Path) -> Stage:
    from opcircuits.extract import ExtractOptions, extract

    opts = _make(ExtractOptions, {**values, "dataset": dataset, "out": store})
    # Results do not depend on the batch size (batch invariance is tested by extraction), so a
    # rerun with another batch size resumes the same store instead of recomputing it.
    settings = {k: v for k, v in values.items() if k in BATCH_ONLY}
    owned = _is_inside(store, run_dir)

    def clear_external() -> None:
        # --force recomputes a store kept outside the run dir too, deleting only the store's own
        # files; without --force such a store is never touched (a mismatch is an error instead).
        from opcircuits.store import MANIFEST, remove_store

        if (store / MANIFEST).is_file():
            log.info("--force: removing the store files in %s", store)
            remove_store(store)

    return Stage(
        name="extract",
        action=lambda: extract(opts),
        inputs={"dataset": dataset, **model_inputs(values)},
        options={
            **{k: v for k, v in values.items() if k not in BATCH_ONLY},
            "store": _rel(store, run_dir),
        },
        outputs={"store": store},
        owned=[store] if owned else [],
        settings=settings,
        on_force=None if owned else clear_external,
    )


def _import_stage(legacy: Path, store: Path) -> Stage:
    from opcircuits.legacy import ImportLegacyOptions, import_legacy

    def action() -> None:
        # An import is quick: always from scratch, never merged with a partial one.
        _remove(store)
        import_legacy(ImportLegacyOptions(file=legacy, out=store, overwrite=True))

    return Stage(
        name="import",
        action=action,
        inputs={"legacy": legacy},
        options={},
        outputs={"store": store},
        owned=[store],
    )


def _analyze_stage(opts: Any, values: dict[str, Any], store: Path, analysis_dir: Path) -> Stage:
    from opcircuits.analysis.analyze import analyze

    def action() -> None:
        # Write into a scratch folder and swap it in whole: a crash never leaves a half report.
        partial = analysis_dir.with_name(f".{analysis_dir.name}.partial")
        _remove(partial)
        analyze(store, partial, opts)
        old = analysis_dir.with_name(f".{analysis_dir.name}.old")
        _remove(old)
        if analysis_dir.exists():
            os.replace(analysis_dir, old)
        os.replace(partial, analysis_dir)
        _remove(old)
        log.info("analysis moved into %s", analysis_dir)

    return Stage(
        name="analyze",
        action=action,
        inputs={"store": store},
        options={k: v for k, v in values.items() if k not in JOBS_ONLY},
        outputs={"analysis": analysis_dir},
        owned=[analysis_dir],
        settings={k: v for k, v in values.items() if k in JOBS_ONLY},
    )


# --- headline ----------------------------------------------------------------------------------


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt_ci(value: float, entry: dict[str, Any], sign: str = "") -> str:
    text = f"{value:{sign}.3f}"
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if _num(lo) and _num(hi):
        text += f" (95% CI {lo:{sign}.3f} to {hi:{sign}.3f})"
    return text


def headline(report: dict[str, Any]) -> list[str]:
    """The few numbers printed at the end of a run, read from analysis_report.json."""
    lines: list[str] = []
    probes = [p for p in report.get("probes", []) if _num(p.get("accuracy"))]
    main = [p for p in probes if p.get("view_kind", "main") == "main"] or probes
    if main:
        best = max(main, key=lambda p: p["accuracy"])
        text = f"best probe: {best.get('probe')} on {best.get('view')}: accuracy "
        text += _fmt_ci(best["accuracy"], best)
        if _num(best.get("p_value")):
            text += f", permutation p = {best['p_value']:.3g}"
        lines.append(text)
        sel = best.get("selectivity")
        if isinstance(sel, dict) and _num(sel.get("value")):
            lines.append(
                f"selectivity vs the best control ({sel.get('control')}): "
                + _fmt_ci(sel["value"], sel, "+")
            )
    controls = [c for c in report.get("controls", []) if _num(c.get("accuracy"))]
    if controls:
        top = max(controls, key=lambda c: c["accuracy"])
        lines.append(f"best control: {top.get('name')}: accuracy {_fmt_ci(top['accuracy'], top)}")
    cells = [c for c in report.get("token_layer_map", []) if _num(c.get("accuracy"))]
    if cells:
        cell = max(cells, key=lambda c: c["accuracy"])
        where = f"{cell.get('position')} @ layer {cell.get('layer')}"
        lines.append(f"best token x layer cell: {where}: {_fmt_ci(cell['accuracy'], cell)}")
    model = report.get("model")
    if isinstance(model, dict):
        overall = [a for a in model.get("answer_accuracy") or [] if a.get("category") == "all"]
        if overall and _num(overall[0].get("accuracy")):
            a = overall[0]
            lines.append(
                f"model answer accuracy: {a['accuracy']:.3f} ({a.get('correct')}/{a.get('n')})"
            )
    return lines


# --- the run -----------------------------------------------------------------------------------


def run(
    config: ResolvedConfig, *, force: bool = False, command: list[str] | None = None
) -> RunResult:
    """Run (or resume) the experiment `config` describes; see the module docstring."""
    mode = config.mode
    out = config.tables["run"]["out"]
    run_dir = prepare_run_dir(Path(out) if out is not None else default_out(mode))
    with _exclusive(run_dir), _log_file(run_dir) as handler:
        argv = command if command is not None else sys.argv
        log.info("run %s in %s (%s)", mode, run_dir, " ".join(argv))
        write_text_atomic(run_dir / "config.resolved.toml", config.to_toml())
        info: dict[str, Any] = {
            "mode": mode,
            "command": list(argv),
            "cwd": str(Path.cwd()),
            "force": force,
            "config_file": str(config.source) if config.source else None,
            "seeds": {
                "data": config.tables["data"].get("seed"),
                "analyze": config.tables["analyze"].get("seed"),
            },
            "versions": versions(),
            "started": _now(),
            "status": "running",
        }
        write_json_atomic(run_dir / "run.json", info)

        hasher = Hasher(run_dir / HASH_CACHE)
        stages, _store, analysis_dir = build_stages(config, run_dir)
        runner = StageRunner(run_dir, hasher, force, handler)
        try:
            for i, stage in enumerate(stages, start=1):
                runner.run(stage, i, len(stages))
        except BaseException as exc:
            info.update(
                status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                error=str(exc),
                stages=runner.outcomes,
                finished=_now(),
            )
            with contextlib.suppress(OSError):
                write_json_atomic(run_dir / "run.json", info)
            # The console gets the CLI's one-line error; the log file gets it too, with the time.
            _file_only(handler, logging.ERROR, f"run stopped: {exc or type(exc).__name__}")
            raise
        finally:
            hasher.save()

        report_file = analysis_dir / "analysis_report.json"
        report = json.loads(report_file.read_text(encoding="utf-8"))
        lines = headline(report)
        info.update(status="complete", stages=runner.outcomes, finished=_now(), headline=lines)
        write_json_atomic(run_dir / "run.json", info)
        log.info("done: report at %s", analysis_dir / "report.html")
        for line in lines:
            log.info("%s", line)
        return RunResult(run_dir, mode, runner.outcomes, analysis_dir, report, lines)
