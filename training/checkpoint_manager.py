"""Save, verify, list, resolve and prune training checkpoints (docs/checkpoints.md).

A checkpoint is a folder under `<run_dir>/checkpoints/`:

    step-000120/
      generator/                   save_pretrained (safetensors) [+ the tokenizer when given]
      discriminator/               the same
      generator_adapter/           only for a peft model: its adapters; generator/ then holds merged weights
      generator_optimizer.pt       torch.save(optimizer.state_dict()); absent when that optimizer is None
      discriminator_optimizer.pt
      rng_state.pt                 capture_rng_state(): python, numpy, torch CPU and CUDA
      trainer_state.json           the caller's dict (the trainer's: its state, last metrics, resolved config)
      manifest.json                format_version, name, step, sequence, score, sha256 and size of every file

Everything is written into a hidden `.tmp-<pid>-<id>-<name>/` beside it, fsynced, the manifest last, and
then renamed into place: a crash or a full disk leaves only a hidden folder, which listing ignores and the
next save removes. `best.json` and `latest.json` beside the checkpoints name the best and the newest.
One process writes to a run folder at a time.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the layout changes; other versions are refused, not guessed at
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
RNG_STATE = "rng_state.pt"
ROLES = ("generator", "discriminator")
REQUIRED_FILES = (TRAINER_STATE, RNG_STATE, "generator/config.json", "discriminator/config.json")
POINTERS = ("best", "latest")  # aliases, stored as <alias>.json in the checkpoints folder
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"  # in the run folder: `lock_run_folder`
T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or incompatible, or a path is not a checkpoint. The message is one
    line and names the file at fault."""


@dataclass
class CheckpointInfo:
    """One checkpoint as listed from its manifest (nothing hashed)."""

    name: str
    path: Path
    step: int | None  # trainer step, when known
    sequence: int  # save order within the run folder: 1, 2, ...; defines "latest"
    score: float | None  # the score it was saved with (higher is better); None: not eligible for best
    created: str  # UTC ISO time, informational only


@dataclass
class Checkpoint:
    """A verified checkpoint to resume from. Optimizer states load on demand: they can be gigabytes."""

    path: Path
    name: str
    step: int | None
    trainer_state: dict
    rng_state: dict  # pass to restore_rng_state
    generator_dir: Path  # AutoModelForCausalLM.from_pretrained(generator_dir)
    discriminator_dir: Path
    generator_optimizer_path: Path | None  # None: that optimizer was not saved
    discriminator_optimizer_path: Path | None
    generator_adapter_dir: Path | None = None  # peft adapters, when the model was a PeftModel
    discriminator_adapter_dir: Path | None = None
    manifest: dict = field(default_factory=dict)

    def optimizer_state(self, role: str, map_location: str | torch.device = "cpu") -> dict | None:
        """The saved `optimizer.state_dict()` of `role` ("generator" or "discriminator"), or None.
        `optimizer.load_state_dict` moves the state to its parameters' device."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        path = getattr(self, f"{role}_optimizer_path")
        return None if path is None else torch.load(path, map_location=map_location, weights_only=True)


def capture_rng_state() -> dict:
    """The state of Python's `random`, NumPy's global generator, torch CPU and every CUDA device, in types
    that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state(legacy=False)
    key = np_state["state"]["key"].astype(np.int64)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(key), "pos": int(np_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Undo `capture_rng_state`: later random draws repeat those made after the capture."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": int(np_state["state"]["pos"])}})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        logger.warning("CUDA RNG state of %d devices not restored: %d visible", len(cuda), torch.cuda.device_count())


class CheckpointManager:
    """Writes checkpoints of one run into `<run_dir>/checkpoints/` and keeps the newest `keep_last`
    (None: all) plus the best; the best and the latest are never pruned."""

    def __init__(self, run_dir: str | Path, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be >= 1, or None to keep every checkpoint")
        self.run_dir = Path(run_dir)
        self.checkpoints_dir = self.run_dir / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def save_checkpoint(self, name_or_step: int | str, generator, discriminator, generator_optimizer,
                        discriminator_optimizer, trainer_state: dict, generator_tokenizer=None,
                        discriminator_tokenizer=None, rng_state: dict | None = None,
                        score: float | None = None) -> Path:
        """Write a checkpoint atomically and return its folder. An int names it `step-000042`; a string
        (letters, digits, '_', '-') is used as is and replaces an existing checkpoint of that name.
        `trainer_state` must be JSON-able; `rng_state` defaults to `capture_rng_state()` now. `score`
        (higher is better) chooses the best checkpoint; None or not finite: never the best."""
        name, step = _checkpoint_name(name_or_step, trainer_state)
        state_json = _to_json(trainer_state)  # fail before anything is written
        self._make_folder()
        existing = self.list_checkpoints()
        tmp = self.checkpoints_dir / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
        final = self.checkpoints_dir / name
        try:
            tmp.mkdir()
            parts = ((generator, generator_tokenizer, generator_optimizer),
                     (discriminator, discriminator_tokenizer, discriminator_optimizer))
            for role, (model, tokenizer, optimizer) in zip(ROLES, parts):
                _save_model(model, tmp / role, tmp / f"{role}_adapter")
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp / role)
                if optimizer is not None:
                    torch.save(optimizer.state_dict(), tmp / f"{role}_optimizer.pt")
            torch.save(capture_rng_state() if rng_state is None else rng_state, tmp / RNG_STATE)
            _write_synced(tmp / TRAINER_STATE, state_json)
            manifest = {
                "format_version": FORMAT_VERSION, "name": name, "step": step,
                "sequence": 1 + max((c.sequence for c in existing), default=0),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "score": float(score) if score is not None and math.isfinite(score) else None,
                "files": _hash_tree(tmp),  # fsyncs every file and folder on the way
            }
            _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2))
            # Pointers first: if we die before the rename they name a folder that does not exist, and
            # resolve_checkpoint falls back to the manifests; they are never left naming an older checkpoint.
            info = CheckpointInfo(name, final, step, manifest["sequence"], manifest["score"], manifest["created"])
            self._write_pointers([c for c in existing if c.name != name] + [info])
            if final.exists():
                logger.warning("replacing the existing checkpoint %s", final)
                self._discard(final)
            os.replace(tmp, final)
            _fsync_dir(self.checkpoints_dir)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, Exception) and not isinstance(e, CheckpointError):  # a full disk, a broken folder
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CheckpointError(f"cannot write checkpoint {name} in {self.checkpoints_dir} ({reason}); the "
                                      "earlier checkpoints are kept") from e
            raise
        logger.info("saved checkpoint %s (step %s, score %s)", final, step, manifest["score"])
        self._prune()
        return final

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first by save order. Temporary folders are ignored and files are
        not hashed here (`load_checkpoint` does that)."""
        if not self.checkpoints_dir.is_dir():
            return []
        infos = []
        for path in self.checkpoints_dir.iterdir():
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                manifest = _read_manifest(path)
            except CheckpointError as e:
                logger.warning("skipping %s: %s", path, e)
                continue
            infos.append(CheckpointInfo(path.name, path, manifest.get("step"), int(manifest.get("sequence", 0)),
                                        manifest.get("score"), manifest.get("created", "")))
        return sorted(infos, key=lambda c: (c.sequence, c.step if c.step is not None else -1))

    def get_latest_checkpoint(self) -> Path | None:
        """The most recently saved checkpoint, by the save sequence in its manifest (never by mtime)."""
        infos = self.list_checkpoints()
        return infos[-1].path if infos else None

    def latest_verified_checkpoint(self) -> Path | None:
        """The newest checkpoint whose every file verifies (size and sha256), what a resume continues from.
        A damaged newer one is skipped with a warning naming it and the one used; CheckpointError when
        checkpoints exist and none verifies; None when there is none."""
        damaged: list[str] = []
        for info in reversed(self.list_checkpoints()):
            try:
                _check_files(info.path, _read_manifest(info.path), hash_files=True)
            except CheckpointError as e:
                logger.warning("checkpoint %s is damaged: %s", info.path, e)
                damaged.append(f"{info.path} ({e})")
                continue
            if damaged:
                logger.warning("resuming from %s, the newest checkpoint that verifies, instead of the damaged %s",
                               info.path, damaged[0])
            return info.path
        if damaged:
            raise CheckpointError(f"no checkpoint in {self.checkpoints_dir} verifies; the latest: {damaged[0]}")
        return None

    def get_best_checkpoint(self) -> Path | None:
        """The checkpoint with the highest score it was saved with (ties: the newer); None if none has one."""
        best = _best(self.list_checkpoints())
        return best.path if best else None

    def _write_pointers(self, infos: list[CheckpointInfo]) -> None:
        for alias, info in (("latest", infos[-1] if infos else None), ("best", _best(infos))):
            pointer = self.checkpoints_dir / f"{alias}.json"
            if info is None:
                pointer.unlink(missing_ok=True)
            else:
                _write_synced(pointer, json.dumps({"name": info.name, "step": info.step, "score": info.score}))

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        infos = self.list_checkpoints()
        best = _best(infos)
        keep = {c.name for c in infos[-self.keep_last:]} | ({best.name} if best else set())  # the latest, the best
        for info in infos:
            if info.name not in keep:
                logger.info("pruning checkpoint %s", info.path)
                self._discard(info.path)

    def _discard(self, path: Path) -> None:
        """Rename out of sight first, so a crash mid-delete never leaves a partial folder that lists."""
        trash = self.checkpoints_dir / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
        os.replace(path, trash)
        _fsync_dir(self.checkpoints_dir)
        shutil.rmtree(trash, ignore_errors=True)

    def prepare(self) -> None:
        """Make the checkpoints folder and prove now that it takes a file, before any step runs: one that
        cannot (a symlink loop, read-only, a file in the way, a full disk) stops the run at its start with a
        one-line CheckpointError, not after steps whose checkpoint would then fail. Also clears what
        crashed saves left."""
        probe = self.checkpoints_dir / f".probe-{os.getpid()}.tmp"
        try:
            self._make_folder()
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"{self.checkpoints_dir} cannot hold checkpoints: {e.strerror or e}") from None

    def _make_folder(self) -> None:
        """Make the checkpoints folder, deleting temporary folders and pointer files left in it by crashed
        saves (there is one writer per run folder: `lock_run_folder`)."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        for path in [*self.checkpoints_dir.glob(f"{TMP_PREFIX}*"), *self.checkpoints_dir.glob(".*.tmp")]:
            logger.info("removing %s, left by an interrupted save", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


def lock_run_folder(run_dir: str | Path):
    """An exclusive lock on `<run_dir>/.lock`, held while the returned file stays open. The kernel drops it
    when the holder exits, however it exits, so a crash leaves no stale lock. A second trainer on the same
    folder gets `RunFolderBusy` naming the holder's pid. Returns None where `fcntl` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        stop = f", stop it (kill {holder})" if holder.isdigit() else ""
        raise RunFolderBusy(f"{run_dir} is in use by another trainer (pid {holder}): wait for it to end{stop}, or "
                            "choose another --output-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def nearest_run_folder(path: str | Path) -> Path | None:
    """The folder beside `path` that holds a run (a config.json) whose name is nearest to `path`'s (difflib),
    for the error of a mistyped run folder; None when there is none."""
    path = Path(path)
    try:
        names = [p.name for p in path.parent.iterdir() if p.name != path.name and (p / "config.json").is_file()]
    except OSError:
        return None
    nearest = difflib.get_close_matches(path.name, names, n=1, cutoff=0.0)
    return path.parent / nearest[0] if nearest else None


def read_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's trainer_state.json, unverified (for the checks before a load, which verifies); {} when
    it cannot be read."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def run_default(run_dir: str | Path) -> str:
    """What a run folder given without "best" or "latest" means: "best" when the run scored its checkpoints on
    a validation slice (`validation_problems` > 0 in its config.json), else "latest": without one, "best" is
    only the training reward of the last step before each checkpoint, and the final weights are the run's
    choice (learn run 5: the final checkpoint gained on held-out problems, the validation's pick did not)."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "best"
    return "best" if isinstance(config, dict) and config.get("validation_problems", 0) else "latest"


def checkpoint_choice(given: str | Path, chosen: Path, which: str | None = None, run_folder: str | None = None) -> str:
    """One line for the commands that take a run folder: which checkpoint `resolve_checkpoint(given, which,
    run_folder)` chose (`chosen`), its step, and why: "checkpoint RUN/checkpoints/step-000008 (step 8): the best
    of RUN by validation score" (without a validation slice the trainer's score is the last step's training
    reward and valid-test rate: `checkpoint_score`), "...: the latest of RUN", or no reason for a checkpoint
    folder given as such."""
    name = Path(given).name
    alias = which or (name if name in POINTERS else None) or (run_folder if Path(chosen) != Path(given) else None)
    if alias == "default":
        alias = run_default(Path(chosen).parent.parent)
    try:
        step = _read_manifest(Path(chosen)).get("step")
    except CheckpointError:
        step = None
    line, run = f"checkpoint {chosen} (step {step})", Path(chosen).parent.parent
    if alias == "latest":
        return f"{line}: the latest of {run}"
    if alias == "best":
        validated = "validation/score" in read_trainer_state(Path(chosen)).get("last_metrics", {})
        score = "validation score" if validated else "training reward and valid-test rate (no validation slice)"
        return f"{line}: the best of {run} by {score}"
    return line


def resolve_checkpoint(path: str | Path, which: str | None = None, run_folder: str | None = None) -> Path:
    """A checkpoint folder from a checkpoint folder, or from a run folder (or its checkpoints/ folder) and
    `which` = "best" or "latest", also spelled `runs/x/best`. `run_folder` ("best", "latest", or "default": the
    run's own `run_default`): what a run folder given without `which` means (None: it is refused). Raises
    CheckpointError with a one-line reason."""
    path = Path(path)
    if which is None and path.name in POINTERS and not (path / MANIFEST).is_file():
        path, which = path.parent, path.name
    if which is None:
        if (path / MANIFEST).is_file():
            return path
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
        if not (path / CHECKPOINTS_DIR).is_dir():
            raise CheckpointError(f"{path} is not a checkpoint: no {MANIFEST}")
        if run_folder is None:
            raise CheckpointError(f"{path} is a run folder, not a checkpoint: use {path}/latest or {path}/best")
        which = run_default(path) if run_folder == "default" else run_folder
    if which not in POINTERS:
        raise CheckpointError(f"unknown checkpoint alias {which!r}: use 'best' or 'latest'")
    ckpt_dir = path / CHECKPOINTS_DIR if (path / CHECKPOINTS_DIR).is_dir() else path
    if ckpt_dir.name != CHECKPOINTS_DIR or not ckpt_dir.is_dir():
        raise CheckpointError(f"{path} is not a run folder: no {CHECKPOINTS_DIR}/ in it")
    try:  # the pointer file is a shortcut; the manifests are the truth
        name = json.loads((ckpt_dir / f"{which}.json").read_text())["name"]
        if _NAME.fullmatch(name) and (ckpt_dir / name / MANIFEST).is_file():
            return ckpt_dir / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    manager = CheckpointManager(ckpt_dir.parent, keep_last=None)
    found = manager.get_latest_checkpoint() if which == "latest" else manager.get_best_checkpoint()
    if found is None:
        reason = "no checkpoint" if which == "latest" else "no checkpoint saved with a score"
        raise CheckpointError(f"no {which} checkpoint in {ckpt_dir}: {reason}")
    return found


def read_resolved(path: str | Path, which: str | None, run_folder: str | None, read: Callable[[Path], T]) -> T:
    """`read(resolve_checkpoint(path, which, run_folder))`, for readers (evaluation, inference) of a run a
    trainer may be writing to: when the checkpoint is pruned while `read` loads it (a newer best or
    latest was saved), resolve the alias again and read that one, once, with a warning naming both. A
    checkpoint folder named directly that disappears is a one-line CheckpointError."""
    first = resolve_checkpoint(path, which, run_folder)
    try:
        return read(first)
    except Exception:
        if (first / MANIFEST).is_file():
            raise  # still there: the failure is the checkpoint's own
        if first.resolve() == Path(path).resolve():
            raise CheckpointError(f"{first} was removed while it was being read (pruned by a trainer writing to "
                                  f"its run?); give the run folder to read the checkpoint it stands for") from None
    again = resolve_checkpoint(path, which, run_folder)
    logger.warning("checkpoint %s was removed while it was being read (pruned by a trainer writing to this run); "
                   "reading %s instead", first, again)
    return read(again)


def load_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Verify the manifest first (presence and size of every file; with `verify`, its sha256 too), then read
    the trainer and RNG state. Model weights are left on disk for `from_pretrained`. Accepts anything
    `resolve_checkpoint` does. Raises CheckpointError naming the file at fault; never loads a damaged one."""
    path = resolve_checkpoint(path)
    manifest = _read_manifest(path)
    _check_files(path, manifest, hash_files=verify)
    try:
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
        rng_state = torch.load(path / RNG_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # only reachable with verify=False or a state written by another tool
        raise CheckpointError(f"{path}: cannot read {TRAINER_STATE} or {RNG_STATE}: {e}") from e
    files = manifest["files"]

    def optional(rel: str) -> Path | None:  # a file, or a folder whose files are listed
        return path / rel if any(k == rel or k.startswith(rel + "/") for k in files) else None

    return Checkpoint(
        path=path, name=manifest.get("name", path.name), step=manifest.get("step"), trainer_state=trainer_state,
        rng_state=rng_state, generator_dir=path / "generator", discriminator_dir=path / "discriminator",
        generator_optimizer_path=optional("generator_optimizer.pt"),
        discriminator_optimizer_path=optional("discriminator_optimizer.pt"),
        generator_adapter_dir=optional("generator_adapter"),
        discriminator_adapter_dir=optional("discriminator_adapter"), manifest=manifest)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
        version, files = manifest["format_version"], manifest["files"]
        if not all(isinstance(e["sha256"], str) and isinstance(e["size"], int) for e in files.values()):
            raise ValueError("malformed 'files' table")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file} is damaged: {e}") from e
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format_version {version!r} is not supported "
                              f"(this code reads version {FORMAT_VERSION})")
    return manifest


def _check_files(path: Path, manifest: dict, hash_files: bool) -> None:
    files = manifest["files"]
    problems = [f"{rel} (not listed in {MANIFEST})" for rel in REQUIRED_FILES if rel not in files]
    problems += [f"{role}/*.safetensors (not listed in {MANIFEST})" for role in ROLES
                 if not any(k.startswith(role + "/") and k.endswith(".safetensors") for k in files)]
    for rel, entry in sorted(files.items()):
        file = path / rel
        if rel.startswith("/") or ".." in rel.split("/"):
            problems.append(f"{rel} (unsafe path in {MANIFEST})")
        elif not file.is_file():
            problems.append(f"{rel} (missing)")
        elif file.stat().st_size != entry["size"]:
            problems.append(f"{rel} (truncated or changed: {file.stat().st_size} bytes, manifest says {entry['size']})")
        elif hash_files and _sha256(file) != entry["sha256"]:
            problems.append(f"{rel} (sha256 mismatch: damaged)")
    if problems:
        raise CheckpointError(f"checkpoint {path} failed verification: {'; '.join(problems)}")
    if not hash_files:
        logger.warning("loading %s without checking sha256 sums", path)
    extra = [p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() not in files
             and p.name != MANIFEST]
    if extra:
        logger.warning("%s holds files not in its manifest (ignored): %s", path, [str(p) for p in extra])


def _checkpoint_name(name_or_step: int | str, trainer_state: dict) -> tuple[str, int | None]:
    if not isinstance(trainer_state, dict):
        raise TypeError(f"trainer_state must be a dict, got {type(trainer_state).__name__}")
    if isinstance(name_or_step, int) and not isinstance(name_or_step, bool):
        if name_or_step < 0:
            raise ValueError(f"step must be >= 0, got {name_or_step}")
        return f"step-{name_or_step:06d}", name_or_step
    name = str(name_or_step)
    if not _NAME.fullmatch(name) or name in POINTERS or name == CHECKPOINTS_DIR:
        raise ValueError(f"bad checkpoint name {name!r}: use letters, digits, '_' and '-', "
                         f"not 'best', 'latest' or '{CHECKPOINTS_DIR}'")
    step = trainer_state.get("step")
    return name, step if isinstance(step, int) else None


def _to_json(trainer_state: dict) -> str:
    def default(obj):  # numpy scalars and arrays, tensors
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
    try:
        return json.dumps(trainer_state, indent=2, default=default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"trainer_state must be JSON-able (dicts, lists, numbers, strings): {e}") from e


def _save_model(model, out_dir: Path, adapter_dir: Path) -> None:
    """`save_pretrained` as safetensors. A peft model is saved twice: its adapters (to resume with the same
    base and KL reference) and, merged on a copy so the live model is untouched, a plain model that any
    transformers user can load. The copy briefly doubles that model's memory."""
    try:
        from peft import PeftModel  # optional dependency
    except ImportError:
        PeftModel = ()
    with _no_progress_bars():  # the training's own bar stays the only one
        if isinstance(model, PeftModel):
            model.save_pretrained(adapter_dir)
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out_dir)
    if not any(out_dir.glob("*.safetensors")):
        raise CheckpointError(f"{out_dir.name}: save_pretrained wrote no .safetensors file")


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' progress bars (save_pretrained's "Writing model shards") off inside, as they were after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_adapters(model, adapter_dir: Path | None, checkpoint: Path) -> None:
    """Load a checkpoint's LoRA adapters into the live peft `model`, in place. The base weights are not
    touched: with LoRA they stay the initial weights, which are the KL reference (adapters off)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = adapter_dir / "adapter_model.safetensors" if adapter_dir else None
    if file is None or not file.exists():
        raise CheckpointError(f"{checkpoint}: no LoRA adapters saved: it was not trained with --lora-rank")
    result = set_peft_model_state_dict(model, load_file(str(file)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise CheckpointError(f"{file}: adapters do not fit this model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")


def _best(infos: list[CheckpointInfo]) -> CheckpointInfo | None:
    eligible = [c for c in infos if c.score is not None]
    return max(eligible, key=lambda c: (c.score, c.sequence), default=None)


def _sha256(file: Path, fd_sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        if fd_sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _hash_tree(root: Path) -> dict:
    """sha256 and size of every file under root, fsyncing files and folders so the rename that follows
    publishes only data that is on disk."""
    files = {}
    for folder, _, names in sorted(os.walk(root)):
        for filename in sorted(names):
            file = Path(folder) / filename
            files[file.relative_to(root).as_posix()] = {"sha256": _sha256(file, fd_sync=True),
                                                        "size": file.stat().st_size}
        _fsync_dir(Path(folder))
    return files


def _write_synced(path: Path, text: str) -> None:
    """Write through a temporary file, fsync, rename over `path`: readers see the old or the new text."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
