"""Import an official PFGM or PFGM++ checkpoint into our checkpoint format, to evaluate it without training.

    python -m flows.import_official --checkpoint checkpoint_26.pth --config cifar10_ddpmpp \\
        --out models/cifar10-official [--data data/prepared/cifar10] [--force]
    python -m flows.import_official --checkpoint training-state-200000.pt --config cifar10_ncsnpp_D_128 \\
        --out models/cifar10-pfgmpp-d128-official [--data data/prepared/cifar10] [--force]

What the file is, is read from its content, not its name; pfgm.official reads it and says what it is
(releases, configurations, PFGM++ snapshots, prior ranges: see there). The stage's story:
  1. read the checkpoint: a PFGM checkpoint (--config: a release name or an official config as .json;
     --prior-range, --M) or a PFGM++/EDM snapshot (--config optional: a PFGM++ release, checked against
     the file through its paper configuration's train section);
  2. check --out, and aim the paper configuration (the release's configs/*.yaml, or --params) at the
     import: train.out = <out>, data.out = --data when given, evaluate/sweep outputs inside <out>, the
     registered model name suffixed with -official;
  3. write <out>/model.pt in the format the train stage writes (pfgm.training.save_checkpoint,
     atomically; objective pfgm with M, z_max, upper_norm, gamma, or pfgmpp with D; metadata `data` and
     `official`, pfgm.official.model_metadata), then <out>/params.yaml when there is a configuration.
flows.pyfunc_model.load_trained, the evaluate flow and the sweep read the import like a trained model:
    python -m flows.evaluate --params <out>/params.yaml
Every input is checked before anything is written; a bad one raises an error naming it.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from torch import nn

from flows.cli import command_line
from flows.common import MODEL_FILE
from flows.params import Params, ParamsError
from pfgm import official
from pfgm.files import write_text
from pfgm.networks.official_snapshot import is_pfgmpp_snapshot
from pfgm.official import ImportOfficialError, Spec
from pfgm.training import RunSpec, TrainConfig, create_state, save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PARAMS_FILE = "params.yaml"


def _redirect(raw: dict[str, Any], section: str, key: str, folder: Path) -> None:
    """Point section.key (an output file) into `folder`, keeping its file name, if the file sets it."""
    if isinstance(raw.get(section), dict) and raw[section].get(key):
        raw[section][key] = str(folder / Path(raw[section][key]).name)


def params_text(spec: Spec, source: Path, out: Path, data: Path | None) -> str:
    """The paper configuration `source` aimed at the imported model, validated, as YAML text."""
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ImportOfficialError(f"--params {source}: not a readable YAML file ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        raise ImportOfficialError(f"--params {source}: needs a `train` section")
    raw["train"]["out"] = str(out)
    if data is not None:
        raw.setdefault("data", {})["out"] = str(data)
    for section, key in (("evaluate", "out"), ("sweep", "out"), ("sweep", "table")):
        _redirect(raw, section, key, out)  # keep the pipeline's own metrics files untouched
    if isinstance(raw.get("evaluate"), dict) and raw["evaluate"].get("model_name"):
        raw["evaluate"]["model_name"] += "-official"  # its own registry entry, its own champion
    try:
        Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(f"--params {source}: {err}") from None
    header = (f"# Written by `python -m flows.import_official` from {source}: train.out is the imported\n"
              f"# official checkpoint ({spec.name}). Evaluate it: python -m flows.evaluate --params "
              f"{out / PARAMS_FILE}\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def write_model(net: nn.Module, path: Path, metadata: dict[str, Any], step: int) -> Path:
    """Our checkpoint of `net`: model and EMA both hold the official EMA weights; Adam is fresh (the
    file is for sampling; the raw weights and optimiser state of the official run are not carried)."""
    state = create_state(net, TrainConfig(steps=max(step, 1)), torch.Generator())
    state.step = step
    return save_checkpoint(path, state, metadata=metadata)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ImportOfficialError(f"--out {out}: exists and is not a folder")
    taken = [name for name in (MODEL_FILE, PARAMS_FILE) if (out / name).exists()]
    if taken and not force:
        raise ImportOfficialError(f"--out {out}: already holds {', '.join(taken)}; pass --force to replace")


def paper_run(release: official.PfgmppRelease) -> RunSpec:
    """The training run the release's paper configuration describes (its train section, validated)."""
    train = Params.model_validate(yaml.safe_load((CONFIGS / release.params).read_text())).train
    return RunSpec.from_attributes(train)


def read_pfgmpp(checkpoint: Path, config: str | None, M: int | None) -> tuple[nn.Module, Spec]:
    """A PFGM++ snapshot: its EMA network and Spec, the release `config` (if any) checked against it."""
    net, info = official.read_pfgmpp_snapshot(checkpoint)  # first: a file that is neither kind is named as such
    official.check_pfgmpp_options(checkpoint, config, M)
    release = None
    if config is not None:
        release = official.pfgmpp_release(config, net, checkpoint)
        official.check_architecture(net, paper_run(release), name=config, release=release, path=checkpoint)
    return net, official.pfgmpp_spec(checkpoint, config, net, info, release)


def import_official(checkpoint: str | os.PathLike, config: str | None, out: str | os.PathLike, *,
                    data: str | os.PathLike | None = None, params: str | os.PathLike | None = None,
                    prior: str = "published", M: int | None = None, force: bool = False) -> dict[str, Any]:
    """Convert `checkpoint` (an official PFGM checkpoint of configuration `config`, or a PFGM++ snapshot,
    `config` then optional) into <out>/model.pt (and <out>/params.yaml when a paper configuration is
    known). Returns the paths written, the objective and the hyperparameters.

    Everything is checked before the first write; both files are written atomically.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    data = None if data is None else Path(data)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no file at {checkpoint}")
    objective = "pfgmpp" if is_pfgmpp_snapshot(checkpoint) else "pfgm"
    if objective == "pfgm":
        net, spec, info = official.read_pfgm(checkpoint, config, prior, M)
        step = info["step"]
    else:
        net, spec = read_pfgmpp(checkpoint, config, M)
        info, step = {}, 0  # the file counts images, not our optimisation steps: `images` in spec.official
    _check_out(out, force)
    source = Path(params) if params is not None else (CONFIGS / spec.params if spec.params else None)
    if params is None and source is not None and not source.is_file():
        source = None  # an installed package without configs/: no params file, the model is enough
    text = params_text(spec, source, out, data) if source is not None else None
    metadata = official.model_metadata(objective, spec, checkpoint, info,
                                       official.data_metadata(spec, list(net.data_shape), data))
    model = write_model(net, out / MODEL_FILE, metadata, step)
    written = write_text(out / PARAMS_FILE, text) if text is not None else None
    return dict(model=str(model), params=None if written is None else str(written), objective=objective,
                hyperparameters=spec.hyperparameters, data=metadata["data"], step=step)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: convert, print a JSON summary and the command that evaluates the import."""
    parser = argparse.ArgumentParser(prog="python -m flows.import_official", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="official PFGM checkpoint_<k>.pth, or PFGM++ training-state-*.pt / .pkl")
    parser.add_argument("--config", default=None,
                        help=f"PFGM: {' | '.join(official.RELEASES)} | path of an official config as .json; "
                             f"PFGM++ (optional): {' | '.join(official.PFGMPP_RELEASES)}")
    parser.add_argument("--out", required=True,
                        help="folder for model.pt (and params.yaml), e.g. models/cifar10-official")
    parser.add_argument("--data", default=None,
                        help="prepared data folder the model belongs to (recorded, shape checked)")
    parser.add_argument("--params", default=None, help="paper configuration to aim at the import "
                                                       "(default: the release's configs/*.yaml)")
    parser.add_argument("--prior-range", default="published", choices=("published", "derived"),
                        help="z_max/upper_norm: as published (PFGM.md section 3) or derived from M (section 2)")
    parser.add_argument("--M", type=int, default=None, help="PFGM: M for a JSON config without training.M")
    parser.add_argument("--force", action="store_true", help="replace an existing model.pt / params.yaml in --out")
    args = parser.parse_args(argv)
    try:
        result = import_official(args.checkpoint, args.config, args.out, data=args.data, params=args.params,
                                 prior=args.prior_range, M=args.M, force=args.force)
    except (ImportOfficialError, ParamsError, FileNotFoundError) as err:  # our messages name the input
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(result, sort_keys=True))
    if result["params"]:
        print(f"evaluate it: python -m flows.evaluate --params {result['params']}")
    return result


if __name__ == "__main__":
    command_line(main)
