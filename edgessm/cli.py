"""The `edgessm` command line: a thin layer over library functions.

Each command parses, calls one library function, prints (a table, or JSON with --json). Errors a
user can cause are EdgeSSMError subclasses: one line on stderr, exit code 2, no traceback.
Option groups for the model and the training loop are generated from their config dataclasses,
so a new config field appears on the command line without a second list of kwargs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import typing
from typing import Any, Callable, Optional

import os

# Before numpy/torch load (they are imported lazily by the commands): on shared, oversubscribed cores
# (CI, a 2-core dev box running anything else) spinning OpenMP and OpenBLAS workers made training
# 16x slower (95.6 s vs 6.1 s per mnist1d epoch) and compression 3x slower (11.0 s vs 3.6 s), measured.
# Passive waiting and one BLAS thread (our LAPACK calls are many small batched ones) avoid that.
# Defaults only: a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from .config import ModelConfig, TrainConfig  # noqa: E402
from .errors import EdgeSSMError  # noqa: E402
from .provenance import derive, task_classes  # noqa: E402
from .runtime.fileio import silence_stdout  # noqa: E402
from .report import json_default  # noqa: E402

# ---- plumbing ----------------------------------------------------------------------------


class _Group(click.Group):
    """Turns EdgeSSMError, click's usage errors and OS errors into one line + exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:  # click would print the usage block first: one line instead
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `edgessm`: the help is what was asked for
                e.show()
                sys.exit(e.exit_code)
            where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split()).rstrip('.')}{where}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeSSMError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # the reader went away (| head): stop quietly, like any filter
            silence_stdout()
            sys.exit(0)
        except OSError as e:  # a full disk, /dev/full as stdout, an unreadable file: one line, no traceback
            silence_stdout()
            where = f" ({e.filename})" if getattr(e, "filename", None) else " (writing the output)"
            click.echo(f"error: {e.strerror or e}{where}", err=True)
            sys.exit(2)




# ---- input/output validation (shared by the commands) ----------------------------------------
SEED = click.IntRange(0, 2**32 - 1)  # numpy's generators take seeds in [0, 2^32)


def _task_inputs(task: str) -> dict[str, str]:
    """The files a --task reads, for the output-path guard."""
    prefix, sep, arg = task.partition(":")
    if not sep or not arg:
        return {}
    if prefix == "npz":
        return {"--task file": os.path.expanduser(arg)}
    if prefix == "lra-listops":
        d = os.path.expanduser(arg)
        return {f"--task file {n}": os.path.join(d, n) for n in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")}
    if prefix == "smnist":
        from .tasks.smnist import FILES, file_names

        d = os.path.expanduser(arg)
        return {f"--task file {n}": os.path.join(d, n) for stem in FILES.values() for n in file_names(stem)}
    return {}


def _guard_paths(inputs: dict[str, Any], outputs: dict[str, Any], read: bool = False) -> None:
    """Refuse outputs that are inputs or each other, and unwritable outputs, before any work is done.

    read=True also requires each input to be a regular file (for readers that do not check it themselves:
    opening a FIFO blocks).
    """
    from .checkpoint import check_outputs
    from .errors import CheckpointError
    from .runtime.fileio import check_writable, regular_file

    if read:
        for label, path in inputs.items():
            if path is not None:
                regular_file(path, label, CheckpointError)
    check_outputs(inputs, outputs)
    for label, path in outputs.items():
        if path is not None:
            check_writable(path, f"{label}", CheckpointError)


def _emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=json_default))
    else:
        click.echo(human(result))


def _scalar_type(tp: Any) -> Optional[type]:
    """int/float/str/bool for Optional[...] and plain annotations; None for lists and others."""
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "str": str, "bool": bool}.get(tp.replace("Optional[", "").rstrip("]"))
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else None
    return tp if tp in (int, float, str, bool) else None


def _field_docs(cls: type) -> dict[str, str]:
    """Each config field's ``help`` metadata: the config dataclass is the one place it is written."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _field_choices() -> dict[str, tuple[str, ...]]:
    from . import config

    return {"layer": config.LAYERS, "init": config.INITS, "mixing": config.MIXINGS, "pooling": config.POOLINGS,
            "norm": config.NORMS, "activation": config.ACTIVATIONS, "encoder": config.ENDS, "decoder": config.ENDS,
            "reduce_moments": config.REDUCE_MOMENTS}


def dataclass_options(cls: type, *, skip: tuple[str, ...] = (), prefix: str = "") -> Callable:
    """Decorator: one --option per scalar field of ``cls``; the values arrive as ``{prefix}overrides``."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip and _scalar_type(hints[f.name])]
    dest = f"{prefix}overrides"
    docs, choices = _field_docs(cls), _field_choices()

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[dest] = {f.name: kwargs.pop(f"{prefix}{f.name}") for f in fields
                            if kwargs.get(f"{prefix}{f.name}") is not None}
            for f in fields:
                kwargs.pop(f"{prefix}{f.name}", None)
            return fn(*args, **kwargs)

        for f in reversed(fields):
            tp = _scalar_type(hints[f.name])
            name = "--" + f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = f"{docs.get(f.name, '')} [default: {default}]".strip()
            if tp is bool:
                wrapper = click.option(f"{name}/--no-{f.name.replace('_', '-')}", f"{prefix}{f.name}", default=None,
                                       help=help_text)(wrapper)
            else:
                ptype = click.Choice(choices[f.name]) if tp is str and f.name in choices else tp
                wrapper = click.option(name, f"{prefix}{f.name}", type=ptype, default=None, show_default=False,
                                       help=help_text)(wrapper)
        return wrapper

    return deco


def _parse_task_options(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--task-option")
        for conv in (int, float):
            try:
                out[key] = conv(val)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(val.lower(), val)
    return out


task_option = click.option("--task", required=True,
                           help="mnist1d | listops | delay | smnist | npz:<path> | lra-listops:<dir> | smnist:<dir>")
task_options_option = click.option("--task-option", "task_option_items", multiple=True, metavar="KEY=VALUE",
                                   help="task generator option, e.g. --task-option max_len=256 (repeatable)")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
out_option = click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
                          help="where to write the checkpoint (.safetensors)")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgessm")
def main() -> None:
    """edgessm: train, compress (balanced truncation), export and run diagonal SSMs on edge GPUs."""


# ---- train / finetune -----------------------------------------------------------------------
def _load_task(task: str, items: tuple[str, ...], seed: int):
    from .tasks import load_task

    return load_task(task, seed=seed, **_parse_task_options(items))


def _run_training(model, data, tcfg, output: str, provenance: dict[str, Any], quiet: bool, reducer=None):
    from .checkpoint import save
    from .train import train

    def on_best(m, info):  # best-checkpoint saving: the file on disk is always the best model so far
        save(m, output, provenance={**provenance, "best_epoch": info["epoch"], "metrics": {"val": info["val"]}})

    from .errors import TrainingDiverged

    saved: list[int] = []

    def on_best_tracked(m, info):
        on_best(m, info)
        saved.append(info["epoch"])

    try:
        res = train(model, data, tcfg, on_best=on_best_tracked, reducer=reducer, progress=not quiet)
    except TrainingDiverged as e:
        kept = (f"{output} holds the best finite model (epoch {saved[-1]})" if saved
                else f"no checkpoint was written to {output}")
        raise TrainingDiverged(f"{e}; {kept}") from None
    prov = {**provenance, "best_epoch": res.best_epoch,
            "metrics": {"val": res.history[-1]["val"] if res.history else {}, "best_val": res.val_metric,
                        "test": res.test_metrics},
            "train_seconds": round(res.seconds, 1), "history": [{"epoch": h["epoch"], "val": h["val"]} for h in res.history]}
    if len(res.rank_schedule) > 1:
        prov["rank_schedule"] = res.rank_schedule
    elif reducer is not None:  # asked for in-training reduction, got none: say so, not a silent full-size model
        sel = (f"--reduce-energy {tcfg.reduce_energy}" if tcfg.reduce_energy is not None
               else f"--reduce-rank {tcfg.reduce_rank}")
        click.echo(f"warning: in-training reduction ({sel}) reduced no layer: at every reduction point up to "
                   f"{tcfg.reduce_until:g} of training the selector kept more than {1 - tcfg.reduce_min_drop:.0%} of "
                   f"each layer's modes; use a smaller --reduce-energy, a --reduce-rank, or a later --reduce-until",
                   err=True)
    save(res.model, output, provenance=prov)
    return res, prov


def _train_summary(r: dict[str, Any]) -> str:
    from .report import table

    rows = [["task", r["task"]], ["test " + r["metric"], f"{r['test']:.4f}"], ["best epoch", r["best_epoch"]],
            ["parameters", f"{r['parameters']:,}"], ["state (real numbers/step)", f"{r['state_size']:,}"],
            ["modes per layer", r["ranks"]], ["train time", f"{r['seconds']:.1f} s"], ["written", r["output"]]]
    if r.get("rank_schedule"):
        rows.insert(5, ["rank schedule", "; ".join(f"ep {e['epoch']}: {e['ranks']}" for e in r["rank_schedule"])])
    return table(["", ""], rows, header=False)


def _result_dict(res, data, output: str, prov: dict[str, Any]) -> dict[str, Any]:
    metric = "accuracy" if data.task_type == "classification" else "mse"
    return {"task": data.name, "metric": metric, "test": res.test_metrics.get(metric), "best_epoch": res.best_epoch,
            "parameters": sum(p.numel() for p in res.model.parameters()), "state_size": sum(res.model.state_size()),
            "step_state_floats": sum(res.model.step_state_floats()),
            "ranks": [b.ssm.N for b in res.model.blocks], "seconds": res.seconds, "output": output,
            "rank_schedule": prov.get("rank_schedule")}


@main.command()
@task_option
@task_options_option
@out_option
@dataclass_options(ModelConfig, skip=("d_input", "d_output", "vocab_size", "task_type"), prefix="m_")
@dataclass_options(TrainConfig, prefix="t_")
@click.option("--quiet", is_flag=True, help="no progress bar")
@json_option
def train(task, task_option_items, output, m_overrides, t_overrides, quiet, as_json):
    """Train a model (S4D, DSS, LRU, S5) on a task and save the best checkpoint (by validation) to -o."""
    import torch

    from .model import SSMModel

    tcfg = TrainConfig(**t_overrides)
    tcfg.validate()
    _guard_paths(_task_inputs(task), {"-o": output})
    data = _load_task(task, task_option_items, tcfg.seed)
    cfg = ModelConfig(d_input=data.d_input, d_output=data.d_output, vocab_size=data.vocab_size,
                      task_type=data.task_type, **m_overrides)
    if data.per_step_targets and cfg.pooling == "mean":  # legal, but the output would be a running mean
        click.echo(f"warning: task {data.name} has a target at every step, and --pooling mean makes every output "
                   "the running mean of the steps so far; use --pooling none for a prediction per step", err=True)
    torch.manual_seed(tcfg.seed)
    model = SSMModel(cfg)
    reducer = None
    if tcfg.reduce_energy is not None or tcfg.reduce_rank is not None:
        from .compress import in_training_reducer

        reducer = in_training_reducer
    prov = derive(None, "train", task=data.name, classes=task_classes({"task_meta": data.meta}),
                  task_meta=_small_meta(data.meta), task_options=_parse_task_options(task_option_items),
                  seq_len=data.seq_len, train_config=tcfg.to_dict())
    res, prov = _run_training(model, data, tcfg, output, prov, quiet or as_json, reducer)
    _emit(_result_dict(res, data, output, prov), as_json, _train_summary)


def _small_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able, short part of a task's meta (class names, source) for provenance."""
    keep = {}
    for k, v in meta.items():
        s = json.dumps(v, default=str)
        if len(s) <= 2000:
            keep[k] = v
    return keep


@main.command()
@click.argument("model_path", type=click.Path(dir_okay=False))
@task_option
@task_options_option
@out_option
@dataclass_options(TrainConfig, prefix="t_",
                   skip=("reduce_energy", "reduce_rank", "reduce_until", "reduce_min_drop", "reduce_horizon",
                         "reduce_moments", "reduce_every"))
@click.option("--quiet", is_flag=True, help="no progress bar")
@json_option
def finetune(model_path, task, task_option_items, output, t_overrides, quiet, as_json):
    """Main training of a (compressed) model from its current parameters (Ezoe & Sato 2024)."""
    from .checkpoint import file_sha256, load

    tcfg = TrainConfig(**t_overrides)
    tcfg.validate()
    _guard_paths({"checkpoint": model_path, **_task_inputs(task)}, {"-o": output})
    model = load(model_path)
    data = _load_task(task, task_option_items, tcfg.seed)
    _check_compatible(model, data, model_path)
    prov = derive(model.provenance, "finetune", parent={"path": str(model_path), "sha256": file_sha256(model_path)},
                  task=data.name, seq_len=data.seq_len, train_config=tcfg.to_dict())
    if data.name != model.provenance.get("task"):  # another task: the old class names no longer apply
        prov.pop("classes", None)
        prov.update({k: v for k, v in (("classes", task_classes({"task_meta": data.meta})),) if v is not None})
    res, prov = _run_training(model, data, tcfg, output, prov, quiet or as_json)
    _emit(_result_dict(res, data, output, prov), as_json, _train_summary)


def _check_compatible(model, data, path) -> None:
    from .errors import TaskError

    c = model.config
    if (c.vocab_size > 0) != (data.vocab_size > 0) or c.d_input != data.d_input or c.d_output != data.d_output:
        raise TaskError(f"model {path} expects d_input={c.d_input}, d_output={c.d_output}, vocab={c.vocab_size} but task "
                        f"{data.name} has d_input={data.d_input}, d_output={data.d_output}, vocab={data.vocab_size}; "
                        "use the task the model was trained on")


# ---- eval / info ------------------------------------------------------------------------------
@main.command(name="eval")
@click.argument("model_path", type=click.Path(dir_okay=False))
@task_option
@task_options_option
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--seed", type=SEED, default=None,
              help="task generator seed [default: the seed the model was trained with on this task, else 0]")
@json_option
def eval_cmd(model_path, task, task_option_items, split, seed, as_json):
    """Evaluate a checkpoint on a task split (by default the test split the model was trained beside)."""
    from .checkpoint import load
    from .train import evaluate

    model = load(model_path)
    if seed is None:  # `train --seed s` also seeds the task generator: evaluate on that draw's test split
        prov = model.provenance
        seed = int(prov.get("train_config", {}).get("seed", 0)) if prov.get("task") == task else 0
    data = _load_task(task, task_option_items, seed)
    _check_compatible(model, data, model_path)
    metrics = evaluate(model, data, split)
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        from .errors import CheckpointError

        raise CheckpointError(f"model {model_path} gives NaN/Inf on {data.name} ({split} loss {metrics.get('loss')}): "
                              "its parameters overflow (e.g. a huge dt); use an earlier checkpoint or re-train")
    out = {"model": str(model_path), "task": data.name, "split": split, "seed": seed, **metrics}
    _emit(out, as_json, lambda r: "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
def info(path, as_json):
    """Describe a checkpoint (.safetensors) or an exported graph (.onnx)."""
    from .report import model_info

    _emit(model_info(path), as_json, _info_text)


def _info_text(r: dict[str, Any]) -> str:
    """Human view: scalars as rows; provenance condensed to what a person reads (full detail with --json)."""
    from .report import table

    rows = []
    for k, v in r.items():
        if k in ("config", "provenance", "metadata"):
            continue
        rows.append([k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v])
    prov = r.get("provenance") or {}
    if prov:
        test = (prov.get("metrics") or {}).get("test") or {}
        if prov.get("task"):
            rows.append(["task", prov["task"]])
        if test:
            rows.append(["test metrics", ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))])
        if prov.get("command"):
            rows.append(["made by", f"edgessm {prov['command']}" + (f" from {prov['parent']['path']}" if prov.get("parent") else "")])
        imp = prov.get("import")
        if isinstance(imp, dict) and isinstance(imp.get("source"), dict):
            rows.append(["imported from", f"{imp.get('family')} {imp.get('level')}: {imp['source'].get('path')}"])
        red = prov.get("reduction")
        if red:
            bounds = [l.get("max_bound") for l in red.get("layers", [])]
            rows.append(["reduction", f"{red.get('method')} {red.get('modes_in')} -> {red.get('modes_out')} modes, "
                                      f"bounds hold: {red.get('bounds_hold')}, max bound per layer "
                                      + str(["-" if b is None else f"{b:.3g}" for b in bounds])])
        if prov.get("rank_schedule"):
            rows.append(["rank schedule", "; ".join(f"ep {e['epoch']}: {e['ranks']}" for e in prov["rank_schedule"])])
    if r.get("config"):
        rows.append(["config", ", ".join(f"{k}={v}" for k, v in r["config"].items())])
    return table(["", ""], rows, header=False)


# ---- compress ---------------------------------------------------------------------------------
@main.command()
@click.argument("model_path", type=click.Path(dir_okay=False))
@out_option
@click.option("--rank", type=int, help="modes per channel to keep (every layer), 0 < r < N")
@click.option("--energy", type=float, help="keep this fraction of each channel's Hankel energy, e.g. 0.999")
@click.option("--tol", type=float, help="smallest rank whose certified bound / channel gain <= tol")
@click.option("--layer-rank", "layer_ranks", multiple=True, metavar="I=R", help="per-layer rank override (repeatable)")
@click.option("--method", type=click.Choice(["balanced", "modal", "random"]), default="balanced", show_default=True)
@click.option("--horizon", default=None, help="time-limited BT over L steps: an integer, or 'auto' (the task's sequence length)")
@click.option("--seed", type=SEED, default=0, show_default=True, help="for --method random")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="write the full report (JSON)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="plot HSV decay and cuts (PNG, needs matplotlib)")
@json_option
def compress(model_path, output, rank, energy, tol, layer_ranks, method, horizon, seed, report_path, plot_path, as_json):
    """Reduce every SSM layer by balanced truncation (or a baseline) and save the smaller model."""
    from .compress import CompressSpec, compress_checkpoint, summary_table
    from .errors import RankError

    from .config import MAX_HORIZON

    _guard_paths({"checkpoint": model_path}, {"-o": output, "--report": report_path, "--plot": plot_path})
    if horizon is not None and horizon not in ("auto", "none"):
        if not horizon.isdigit() or not 2 <= int(horizon) <= MAX_HORIZON:
            raise RankError(f"--horizon {horizon!r} must be 'auto' or an integer in [2, {MAX_HORIZON}] "
                            "(beyond that the L-step Gramians equal the infinite ones: omit --horizon)")
        horizon = int(horizon)
    overrides = {}
    for item in layer_ranks:
        i, sep, r = item.partition("=")
        if not sep or not i.isdigit() or not r.isdigit():
            raise RankError(f"--layer-rank {item!r} must look like LAYER=RANK, e.g. --layer-rank 0=8")
        overrides[int(i)] = int(r)
    spec = CompressSpec(rank=rank, energy=energy, tol=tol, layer_ranks=overrides, method=method,
                        horizon=horizon, seed=seed)
    result = compress_checkpoint(model_path, output, spec, report_path=report_path, plot_path=plot_path)
    _emit(result, as_json, summary_table)


# ---- import ---------------------------------------------------------------------------------------
@main.command(name="import")
@click.argument("source_path", type=click.Path(dir_okay=False))
@click.option("--from", "family", required=True, type=click.Choice(["s4d", "s4", "dss", "s5", "lru"]),
              help="the codebase that trained it: s4d (s4 models/s4/s4d.py, example.py), s4 (S4Block, mode='diag'), "
                   "dss (ag1988/dss), s5 (lindermanlab/S5 S5SSM layer), lru (CompreSSM LRU model, or one layer with --prefix)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="JSON (or YAML) of the source's constructor arguments [default: the upstream defaults]")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="one constructor argument, over --config, e.g. --set disc=bilinear (repeatable)")
@click.option("--prefix", default=None, help="where the layer/model sits in the file's keys, e.g. model.layers.0.layer")
@click.option("--length", type=int, default=None,
              help="the training length L, for kernels normalised over L (DSS softmax, S4 disc=dss); the check's L otherwise")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="--from lru model: the BatchNorm running statistics, the eqx.nn.State saved as .npz like the weights")
@out_option
@json_option
def import_cmd(source_path, family, config_path, set_items, prefix, length, state_path, output, as_json):
    """Import a model or layer trained with another codebase into an edgessm checkpoint, and check it."""
    from .importers import import_checkpoint, parse_sets, source_options, summary

    _guard_paths({"input file": source_path, "--config": config_path, "--state": state_path}, {"-o": output}, read=True)
    opts = source_options(config_path, parse_sets(set_items), length)
    _emit(import_checkpoint(source_path, output, family, opts, prefix=prefix, length=length, state=state_path),
          as_json, summary)


# ---- export -------------------------------------------------------------------------------------
@main.command()
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--onnx", "fmt", flag_value="onnx", default="onnx", help="ONNX step graph (the only format)")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="model.onnx")
@click.option("--target", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="graph form: elementwise (cpu) or fewest nodes (cuda, tensorrt)")
@click.option("--fp16", is_flag=True, help="half-precision weights and activations; recurrence kept in float32")
@click.option("--chunk", type=click.IntRange(min=1), default=None, help="also write a graph that advances T steps per call")
@click.option("--opset", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--no-verify", is_flag=True, help="skip the post-export parity check (not recommended)")
@click.option("--verify-steps", type=click.IntRange(1, 100_000), default=300, show_default=True)
@json_option
def export(model_path, fmt, output, target, fp16, chunk, opset, no_verify, verify_steps, as_json):
    """Export a checkpoint to an ONNX graph that runs one time step per call (state in, state out)."""
    from .checkpoint import file_sha256, load
    from .export import default_chunk_path, export_onnx

    _guard_paths({"checkpoint": model_path},
                 {"-o": output, "chunk graph": default_chunk_path(output, chunk) if chunk else None})
    model = load(model_path)
    res = export_onnx(model, output, target=target, fp16=fp16, chunk=chunk, opset=opset, verify=not no_verify,
                      verify_steps=verify_steps, source_sha256=file_sha256(model_path))
    out = res.to_dict() if hasattr(res, "to_dict") else dataclasses.asdict(res)
    _emit(out, as_json, _info_text)


if __name__ == "__main__":  # pragma: no cover
    main()
