"""``synaprune diagnose``: diagnose a saved model on a data file, or a run of the lab.

    synaprune diagnose --model mlp:4-8-1:tanh --checkpoint weights.pt --data data.npz
    synaprune diagnose --model mymodels:build --checkpoint weights.pt --data data.npz \\
        --loss cross-entropy --format json
    synaprune diagnose --db results.db --run 7      # ids: synaprune results --db results.db --runs

``--model`` is either ``mlp:W0-W1-...-WL:ACT`` (layer widths, then the hidden activation; the
model is ``nn.Sequential(Linear(W0, W1), ACT, ..., Linear(W(L-1), WL))``, so a state dict saved
from that ``nn.Sequential`` loads) or ``module:function``, a function importable from the current
directory that returns the ``nn.Module``. The checkpoint, read with ``torch.load(...,
weights_only=True)``, is a state dict (``torch.save(model.state_dict(), path)``), a Lightning
``.ckpt`` (its ``state_dict``; a key prefix such as ``model.`` is stripped to match the model's
keys) or a dict holding the state dict under ``"model"`` beside other entries.
The data file is an ``.npz`` with arrays ``x`` [N, ...] and ``y`` ([N] or [N, out] floats for
``--loss mse``; [N] integer class labels for ``--loss cross-entropy``). The diagnosis runs in
float64. A ``torch.export`` program saved with ``torch.export.save`` (``--checkpoint
model.pt2``, exported with a dynamic batch dimension) needs no ``--model``.

``--db results.db --run ID`` diagnoses the final parameters of one run stored by ``synaprune
bench``: the model is ``get_problem(problem).build_model(seed)`` (buffers as built) with the
stored parameters loaded strictly, the data are the problem's training split and the loss is the
problem's own mean loss (``problem.loss_fn``), so the diagnosis is of the objective the run
minimised. The run's stored curve (loss and gradient norm at about 100 steps) is the history,
with the parameter norm at the start (rebuilt from the seed) and at the end (the store keeps no
other); the run's method and problem decide which remedies are offered. A problem whose loss is
exact (``teacher-student`` with ``exact=True``) has no data,
and :func:`~synaprune.diagnose.diagnose` needs data; such runs are refused rather than diagnosed on
samples, whose empirical loss is a different function with a different gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sqlite3
import sys
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from synaprune.errors import UsageError

if TYPE_CHECKING:
    from synaprune.bench.store import StoredRun
    from synaprune.diagnose._report import Diagnosis
    from synaprune.problems import Problem


def _usage(message: str) -> Exception:
    """A :class:`synaprune.errors.UsageError`: the main CLI prints it as one line, exit 2."""
    return UsageError(message)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
LOSSES = ("mse", "cross-entropy")


def build_mlp(spec: str) -> nn.Sequential:
    """Build the MLP of a ``mlp:W0-W1-...-WL:ACT`` spec.

    Raises:
        UsageError: a malformed spec or an unknown activation.
    """
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "mlp":
        raise _usage(f"malformed model spec {spec!r}: expected mlp:WIDTHS:ACTIVATION, e.g. "
                         "mlp:4-8-1:tanh, or module:function")
    try:
        widths = [int(w) for w in parts[1].split("-")]
    except ValueError:
        raise _usage(f"malformed layer widths {parts[1]!r} in {spec!r}: expected positive "
                         "integers joined by '-', e.g. 4-8-1") from None
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise _usage(f"malformed layer widths {parts[1]!r} in {spec!r}: need at least two "
                         "positive widths, e.g. 4-8-1")
    act = parts[2]
    if act not in ACTIVATIONS:
        raise _usage(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


def build_model(spec: str) -> nn.Module:
    """The model of ``--model``: an ``mlp:`` spec or ``module:function`` from the current dir.

    Raises:
        UsageError: malformed spec, import failure, or a function that returns no nn.Module.
    """
    if spec.startswith("mlp:"):
        return build_mlp(spec)
    parts = spec.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise _usage(f"malformed model spec {spec!r}: expected mlp:WIDTHS:ACTIVATION, e.g. "
                         "mlp:4-8-1:tanh, or module:function")
    module_name, func_name = parts
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _usage(f"cannot import module {module_name!r} for --model: "
                         f"{type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise _usage(f"module {module_name!r} has no function {func_name!r}")
    try:
        model = func()
    except Exception as exc:
        raise _usage(f"{spec} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise _usage(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_state(model_state: dict[str, Tensor], state: Any, what: str,
                 model: str = "the model") -> None:
    """Check that ``state`` is a dict of tensors with exactly the keys and shapes of
    ``model_state`` and finite values.

    Args:
        model_state: Tensors by name that the model expects.
        state: What was loaded.
        what: Names ``state`` in messages, e.g. ``"checkpoint w.pt"``.
        model: Names the model in messages.

    Raises:
        UsageError: not a state dict, missing or unexpected keys, wrong shapes, NaN or inf.
    """
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise _usage(f"{what} is not a state dict (a dict of parameter names to "
                     f"tensors); got {type(state).__name__}")
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    if missing or unexpected:
        raise _usage(f"{what} does not match {model}: missing keys "
                     f"{missing or 'none'}, unexpected keys {unexpected or 'none'}")
    wrong = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in model_state.items()
             if state[k].shape != v.shape]
    if wrong:
        raise _usage(f"{what} does not match {model}: shapes (stored vs model) differ "
                     f"for {'; '.join(wrong)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise _usage(f"{what} holds NaN or inf values in {', '.join(bad)}")


# Keys under which checkpoints commonly keep the model's state dict: Lightning's .ckpt
# ("state_dict"), and the {"model": ..., "optimizer": ..., "epoch": ...} dicts of training loops.
_STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _unwrap_checkpoint(model_state: dict[str, Tensor], loaded: Any, path: str) -> Any:
    """The state dict inside what was loaded, with any key prefix removed.

    A plain state dict is returned as it is, or without a prefix (DataParallel's
    ``"module."``) when that makes its keys the model's. A dict holding a state dict under one of
    ``_STATE_KEYS`` (a Lightning checkpoint's ``state_dict``, a training loop's ``model``) gives
    that state dict; its keys may carry a prefix (Lightning's ``"model."`` for a LightningModule
    whose network is ``self.model``), stripped when the stripped keys are exactly the model's.

    Raises:
        UsageError: a dict that holds no state dict (the message lists its keys), or a state
            dict whose keys match none of the model's, even without a prefix.
    """
    if not isinstance(loaded, dict):
        return loaded
    found = [k for k in _STATE_KEYS if _is_state_dict(loaded.get(k))]
    if _is_state_dict(loaded):
        found, loaded = ["state dict"], {"state dict": loaded}  # e.g. DataParallel's "module."
    elif not found:
        keys = ", ".join(repr(k) for k in list(loaded)[:12]) or "none (it is empty)"
        more = f" and {len(loaded) - 12} more" if len(loaded) > 12 else ""
        raise _usage(f"checkpoint {path} is a dict without a state dict: it has keys {keys}{more};"
                     f" expected a state dict (parameter names to tensors), or one under "
                     f"{' or '.join(repr(k) for k in _STATE_KEYS)}")
    state = loaded[found[0]]
    if set(state) == set(model_state):
        return state
    # The prefix p (possibly "") whose stripped keys {key minus p} match the most of the
    # model's keys; keys without p (e.g. a LightningModule's loss module) are left out.
    wanted = set(model_state)
    prefixes = {""} | {key[: len(key) - len(name)] for key in state for name in wanted
                       if key.endswith(name)}
    best, stripped = 0, state
    for prefix in sorted(prefixes):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(set(candidate) & wanted)
        if hits > best:
            best, stripped = hits, candidate
    if best == 0 and found[0] == "state dict":
        return state  # _check_state names the missing and unexpected keys
    if best == 0:
        sample = ", ".join(list(state)[:4])
        ours = ", ".join(list(model_state)[:4])
        raise _usage(f"checkpoint {path}: the keys of its {found[0]!r} ({sample}, ...) match "
                     f"none of the model's ({ours}, ...), with or without a prefix: is it a "
                     "checkpoint of this model?")
    return stripped  # _check_state names any missing or unexpected keys


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a checkpoint (``torch.load(..., weights_only=True)``) into ``model``, strictly.

    Accepted: a state dict (``torch.save(model.state_dict(), path)``); a Lightning ``.ckpt``
    (its ``"state_dict"``, with a prefix such as ``"model."`` stripped to match the model's
    keys); a dict holding the state dict under ``"model"`` (or ``"model_state_dict"``,
    ``"model_state"``, ``"net"``) beside other entries (optimizer state, epoch, ...).

    Raises:
        UsageError: unreadable file, not a state dict, or keys/shapes that do not match.
    """
    if os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise _usage(f"checkpoint {path} is not a file written by torch.save (not a zip "
                         "archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise _usage(f"checkpoint not found: {path}") from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        _, _, after = text.partition("WeightsUnpickler error:")
        detail = (after or text or type(exc).__name__).strip().split(". ")[0]
        raise _usage(f"cannot read checkpoint {path} as weights only (a state dict saved "
                     f"with torch.save, or a checkpoint of plain types): {detail}") from None
    state = _unwrap_checkpoint(model.state_dict(), state, path)
    _check_state(model.state_dict(), state, f"checkpoint {path}")
    model.load_state_dict(state)


def load_exported(path: str) -> nn.Module:
    """The module of a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``).

    Export with a dynamic batch dimension (``dynamic_shapes``), or the program accepts only the
    batch size it was traced with. Forward hooks do not run inside the exported graph, so the
    per-layer gradient flow and dead units are not available for such a model.

    Raises:
        UsageError: missing or unreadable file.
    """
    if not os.path.isfile(path):
        raise _usage(f"checkpoint not found: {path}")
    try:
        program = torch.export.load(path)
        return program.module()
    except Exception as exc:
        text = " ".join(str(exc).split()).split(". ")[0]
        raise _usage(f"cannot load torch.export program {path}: {type(exc).__name__}: "
                         f"{text}") from None


def load_data(path: str, loss: str) -> tuple[Tensor, Tensor]:
    """Read ``x`` and ``y`` from an ``.npz`` file (``allow_pickle=False``), as float64 tensors
    (``y`` as int64 labels for cross-entropy).

    Raises:
        UsageError: unreadable file, missing arrays, wrong shapes or dtypes, NaN or inf.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files) if hasattr(npz, "files") else []
            missing = [a for a in ("x", "y") if a not in names]
            if missing:
                raise _usage(f"data file {path} lacks array(s) {', '.join(missing)} (it "
                                 f"has {', '.join(names) or 'none'}); expected x and y")
            x, y = npz["x"], npz["y"]
    except UsageError:
        raise
    except FileNotFoundError:
        raise _usage(f"data file not found: {path}") from None
    except Exception as exc:
        raise _usage(f"cannot read data file {path} as .npz without pickle: "
                         f"{type(exc).__name__}: {exc}") from None
    for name, arr in (("x", x), ("y", y)):
        if arr.dtype.kind not in "fiub":
            raise _usage(f"array {name} in {path} has dtype {arr.dtype}; expected numbers")
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise _usage(f"array {name} in {path} has shape {list(arr.shape)}; expected "
                             "[N, ...] with N >= 1 examples")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise _usage(f"array {name} in {path} holds NaN or inf values")
    if x.ndim < 2:
        raise _usage(f"array x in {path} has shape {list(x.shape)}; expected [N, features]")
    if x.shape[0] != y.shape[0]:
        raise _usage(f"arrays x and y in {path} disagree on the number of examples: "
                         f"{x.shape[0]} vs {y.shape[0]}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    if loss == "cross-entropy":
        if y.ndim != 1 or y.dtype.kind not in "iu" or (y < 0).any():
            raise _usage(f"array y in {path} has shape {list(y.shape)} and dtype {y.dtype}; "
                             "cross-entropy needs [N] non-negative integer class labels")
        return xt, torch.from_numpy(y.astype(np.int64))
    if y.ndim > 2:
        raise _usage(f"array y in {path} has shape {list(y.shape)}; mse needs [N] or "
                         "[N, outputs]")
    return xt, torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))


def _check_fit(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> Tensor:
    """Run the model once and check its output against y; returns y shaped for the loss."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _usage(f"the model cannot take x of shape {list(x.shape)}: "
                         f"{type(exc).__name__}: {first}") from None
    if not isinstance(out, Tensor):
        raise _usage(f"the model returns {type(out).__name__}, not a tensor")
    if loss == "cross-entropy":
        if out.dim() != 2:
            raise _usage(f"cross-entropy needs model outputs [N, classes], got "
                             f"{list(out.shape[1:])} per example")
        if int(y.max()) >= out.shape[1]:
            raise _usage(f"y holds class label {int(y.max())} but the model has "
                             f"{out.shape[1]} outputs")
        return y
    per_example = list(out.shape[1:])
    if list(y.shape[1:]) == per_example:
        return y
    if y.dim() == 1 and per_example == [1]:
        return y.unsqueeze(1)
    raise _usage(f"y has shape {list(y.shape)} but the model outputs {per_example} per "
                     "example")


def _list_hint(db: str) -> str:
    return f"list the ids with: synaprune results --db {db} --runs"


def load_run(db: str, run: str | int) -> tuple[StoredRun, Problem, nn.Module]:
    """The stored run ``run`` of results database ``db``, its problem, and its model at the
    run's final parameters (float64, eval mode).

    The model is ``problem.build_model(seed)`` with every parameter replaced by the stored one
    (names and shapes checked strictly, values finite); buffers stay as built.

    Args:
        db: Path of a results database written by ``synaprune bench``.
        run: The run's id (an int, or its decimal string as typed on the command line).

    Returns:
        ``(stored run, problem, model)``.

    Raises:
        UsageError: not an integer id, a missing or unreadable file, a file that is not a
            results database, an unknown id, a diverged run, a problem that cannot be
            rebuilt, parameters that do not fit the model, or a problem without data.
    """
    from synaprune.bench.store import ResultStore
    from synaprune.problems import get_problem

    try:
        run_id = int(run)
    except ValueError:
        raise _usage(f"--run must be an integer run id, got {run!r}; {_list_hint(db)}") from None
    try:
        store = ResultStore(db, readonly=True)
    except FileNotFoundError:
        raise _usage(f"cannot read database {db}: no such file") from None
    except (sqlite3.Error, OSError) as exc:
        if "no such table" in str(exc):
            raise _usage(f"{db} is not a results database (it has no runs table); write one "
                         f"with: synaprune bench --db {db} ...") from None
        raise _usage(f"cannot read database {db}: {exc}") from None
    try:
        stored = store.get_run(run_id)
    except KeyError as exc:
        raise _usage(str(exc.args[0])) from None
    except sqlite3.Error as exc:
        raise _usage(f"cannot read run {run_id} from {db} (not a results database?): "
                     f"{exc}") from None
    except Exception as exc:  # torch.load of the stored bytes
        detail = " ".join(str(exc).split()).split(". ")[0]
        raise _usage(f"cannot read the stored parameters of run {run_id} in {db} as weights "
                     f"only: {type(exc).__name__}: {detail}") from None
    finally:
        store.close()
    if stored.status == "diverged":
        raise _usage(f"run {run_id} diverged (its loss became NaN or inf, or a million times "
                     "its start): its final parameters are no point to diagnose; pick a run "
                     "whose status is ok or budget")
    try:
        problem = get_problem(stored.problem)
    except (ValueError, KeyError) as exc:
        raise _usage(f"cannot rebuild the problem {stored.problem!r} of run {run_id}: "
                     f"{str(exc).strip(chr(34) + chr(39))}") from None
    if not problem.per_example:
        raise _usage(f"run {run_id} is on {problem.spec}, whose loss is exact (no data) and "
                     "diagnose needs data; runs of a problem with data (e.g. teacher-student:"
                     "exact=false) can be diagnosed")
    model = problem.build_model(stored.seed)
    _check_state({k: v.detach() for k, v in model.named_parameters()}, stored.params,
                 f"the stored parameters of run {run_id}", f"the model of {problem.spec}")
    state = model.state_dict()
    state.update(stored.params)
    model.load_state_dict(state, strict=True)
    model = model.double()
    model.eval()
    return stored, problem, model


def run_history(db: str, stored: StoredRun, problem: Problem) -> tuple[dict[str, list], list[str]]:
    """The run's stored curves as a ``diagnose`` history, and what the store does not keep.

    The store keeps a downsampled curve of ``[step, loss, grad_norm]`` (about 100 points; the
    last point's gradient is the full-batch one at the final parameters) and the final
    parameters, not the parameter norm along the way: the history's ``param_norm`` is
    ||theta|| at the initialisation (``problem.build_model(seed)``, rebuilt) and at the end.

    Returns:
        ``(history, notes)``: the history for :func:`diagnose` (keys ``step``, ``loss``,
        ``grad_norm``, ``param_norm``) and one note on what is missing.
    """
    from synaprune.bench.store import ResultStore

    with ResultStore(db, readonly=True) as store:
        rows = [r for r in store.rows([stored.problem], [stored.method]) if r["id"] == stored.id]
    curve = rows[0]["curve"] if rows else []
    initial = problem.build_model(stored.seed)
    norm = math.sqrt(sum(float(p.detach().double().pow(2).sum())
                         for p in initial.parameters()))
    final = math.sqrt(sum(float(t.double().pow(2).sum()) for t in stored.params.values()))
    history = {"step": [p[0] for p in curve], "loss": [p[1] for p in curve],
               "grad_norm": [p[2] for p in curve], "param_norm": [norm, final]}
    notes = [f"history: the run's stored curve ({len(curve)} points of loss and gradient norm); "
             "the store keeps the parameter norm only at the start (rebuilt from the seed) and "
             "at the end, so 'still growing' cannot be checked"]
    return history, notes


def _run_header(stored: StoredRun, db: str) -> str:
    grad = ("unknown" if stored.final_grad_norm is None
            else f"{stored.final_grad_norm:.6g}")
    return (f"Run {stored.id} of {db}: problem {stored.problem}, method {stored.method}, seed "
            f"{stored.seed}\n  status {stored.status} after {stored.steps} of {stored.budget} "
            f"steps, final loss {stored.final_loss:.6g}, final gradient norm {grad} (as "
            "recorded)")


def diagnose_run(db: str, run: str | int, *, k: int = 5, seed: int = 0,
                 lanczos_maxiter: int | None = None,
                 progress: bool | None = None) -> tuple[StoredRun, Diagnosis]:
    """Diagnose the final parameters of run ``run`` of results database ``db``.

    What ``synaprune diagnose --db DB --run ID`` prints, and the report's diagnoses of stuck
    runs: the model of :func:`load_run` on the problem's training data with the problem's own
    loss, the stored curve as the history (:func:`run_history`), the run's method and problem
    for the remedies; a note when the loss at the stored parameters differs from the recorded
    final loss.

    Args:
        db: Path of a results database written by ``synaprune bench``.
        run: The run's id.
        k: Hessian eigenvalues from each end (Lanczos).
        seed: Seed of Lanczos' start vector.
        lanczos_maxiter: Cap on Lanczos' Hessian-vector products (None: its default).
        progress: Progress bar (None: on a terminal once the diagnosis takes 2 s).

    Returns:
        ``(stored run, diagnosis)``.

    Raises:
        UsageError: As :func:`load_run`.
    """
    from synaprune.diagnose._diagnose import diagnose

    stored, problem, model = load_run(db, run)
    x, y = problem.data("train")  # type: ignore[misc]
    history, missing = run_history(db, stored, problem)
    diag = diagnose(model, problem.loss_fn, (x, y), k=k, seed=seed, history=history,
                    method=stored.method, problem=problem.name, lanczos_maxiter=lanczos_maxiter,
                    progress=progress)
    diag.notes.extend(missing)
    recorded = stored.final_loss
    if abs(diag.loss - recorded) > 1e-8 * max(abs(recorded), 1e-12):
        diag.notes.append(f"the loss at the stored parameters ({diag.loss:.10g}) differs from "
                          f"the run's recorded final loss ({recorded:.10g}): the problem's "
                          "definition may have changed since the run")
    return stored, diag


def _run_stored(args: argparse.Namespace) -> int:
    if args.db is None:
        raise _usage("--run needs --db, the results database that holds the run")
    if args.run is None:
        raise _usage(f"--db needs --run ID, the id of the run to diagnose; "
                     f"{_list_hint(args.db)}")
    if args.loss is not None:
        raise _usage("--loss does not apply to --db/--run: a stored run is diagnosed with its "
                     "problem's own loss")
    for name in ("method", "problem"):
        if getattr(args, name) is not None:
            raise _usage(f"--{name} does not apply to --db/--run: a stored run has its own")
    stored, diag = diagnose_run(args.db, args.run, k=args.k, seed=args.seed,
                                progress=False if args.quiet else None)
    if args.format == "json":
        run_info = {"id": stored.id, "db": args.db, "problem": stored.problem,
                    "method": stored.method, "seed": stored.seed, "budget": stored.budget,
                    "status": stored.status, "steps": stored.steps,
                    "final_loss": stored.final_loss if math.isfinite(stored.final_loss) else None,
                    "final_grad_norm": stored.final_grad_norm}
        print(json.dumps({"run": run_info, **diag.to_dict()}, indent=2))
    else:
        print(_run_header(stored, args.db))
        print(diag.format())
    return 0


def _run(args: argparse.Namespace) -> int:
    from synaprune.diagnose._diagnose import diagnose

    if args.k < 1:
        raise _usage(f"--k must be a positive integer, got {args.k}")
    stored_run = args.db is not None or args.run is not None
    saved_model = [f"--{name}" for name in ("model", "checkpoint", "data")
                   if getattr(args, name) is not None]
    if stored_run and saved_model:
        raise _usage(f"--db/--run (a stored run) and {'/'.join(saved_model)} (a saved model) "
                     "exclude each other: give one or the other")
    if stored_run:
        return _run_stored(args)
    from synaprune.diagnose._measured import check_problem, run_settings

    for name, check in (("method", run_settings), ("problem", check_problem)):
        value = getattr(args, name)
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                raise _usage(f"--{name} {value}: {exc}") from None
    if args.checkpoint is None or args.data is None:
        raise _usage("nothing to diagnose without --checkpoint and --data (a saved model and "
                     "its data), or --db and --run (a run stored by synaprune bench)")
    args.loss = "mse" if args.loss is None else args.loss
    if args.loss not in LOSSES:
        raise _usage(f"unknown loss {args.loss!r}; expected one of {', '.join(LOSSES)}")
    if args.checkpoint.endswith(".pt2"):
        if args.model:
            raise _usage("a torch.export program (.pt2) holds its own model: leave out "
                             "--model")
        model = load_exported(args.checkpoint)
    else:
        if not args.model:
            raise _usage("--model is required (mlp:WIDTHS:ACTIVATION or module:function) "
                             "unless --checkpoint is a torch.export program (.pt2)")
        model = build_model(args.model)
        load_checkpoint(model, args.checkpoint)
    x, y = load_data(args.data, args.loss)
    model = model.double()
    with contextlib.suppress(NotImplementedError):  # an exported program is traced in one mode
        model.eval()
    y = _check_fit(model, x, y, args.loss)
    loss_fn: Callable[[Any, Any], Tensor] = (
        nn.functional.mse_loss if args.loss == "mse" else nn.functional.cross_entropy)
    diag = diagnose(model, loss_fn, (x, y), k=args.k, seed=args.seed, method=args.method,
                    problem=args.problem, progress=False if args.quiet else None)
    if args.format == "json":
        print(json.dumps(diag.to_dict(), indent=2))
    else:
        print(diag.format())
    return 0


def add_diagnose_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``diagnose`` subcommand on an ``argparse`` subparsers object.

    Args:
        subparsers: the result of ``parser.add_subparsers(...)``.

    Returns:
        The new subparser (its ``func`` default returns the exit status).
    """
    p = subparsers.add_parser(
        "diagnose", help="what kind of point a saved model sits at, what is wrong, what to try",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default=None,
                   help="mlp:WIDTHS:ACTIVATION (e.g. mlp:4-8-1:tanh) or module:function")
    p.add_argument("--checkpoint", default=None, help="state dict saved with torch.save")
    p.add_argument("--data", default=None, help=".npz file with arrays x and y")
    p.add_argument("--loss", default=None,
                   help="mse (default) or cross-entropy; not with --db (a run has its loss)")
    p.add_argument("--db", default=None,
                   help="results database of synaprune bench; with --run, instead of "
                        "--model/--checkpoint/--data")
    p.add_argument("--run", default=None,
                   help="id of the run in --db to diagnose (synaprune results --db X --runs "
                        "lists them)")
    p.add_argument("--method", default=None,
                   help="the lab method spec the model was trained with (e.g. adam:lr=0.01), so "
                        "that no remedy recommends what it already uses; not with --db")
    p.add_argument("--problem", default=None,
                   help="the lab problem this one is like (xor, spirals, ...), for the lab's "
                        "measured remedies; not with --db")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (it is shown on a terminal once the diagnosis takes "
                        "2 s)")
    p.add_argument("--format", default="text", choices=("text", "json"), help="output format")
    p.add_argument("--k", type=int, default=5, help="Hessian eigenvalues from each end")
    p.add_argument("--seed", type=int, default=0, help="seed of Lanczos' start vector")
    p.set_defaults(func=_run)
    return p
