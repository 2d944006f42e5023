"""Flow `pipeline`: prepare -> train -> evaluate in one go, for a one-off run without DVC.

    python -m flows.pipeline --params params.yaml

The same three flows that the DVC stages run, as subflows of one Prefect flow run. Every section of
params.yaml is validated before anything starts, so a bad key fails before any data is written or
any MLflow run is created.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from flows.checks import check_devices
from flows.cli import command_line
from flows.common import MODEL_FILE
from flows.evaluate import evaluate
from flows.params import Params, load_params, params_parser
from flows.prepare import prepare
from flows.tracking import configure
from flows.train import train
from pfgm.data import check_raw_files


@flow(name="pipeline")
def pipeline(params: Params, root: str = ".", history: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline; returns {"manifest", "train", "evaluate"} as the flows return them."""
    manifest = prepare(params.data)
    trained = train(params.train, params.data, root=root, history=history)
    configure(root)
    metrics = evaluate(params.evaluate, data_dir=params.data.out,
                       model_path=str(Path(params.train.out) / MODEL_FILE))
    return {"manifest": manifest, "train": trained, "evaluate": metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = params_parser(__doc__)
    parser.add_argument("--history", default=None, help="also write the training history as CSV here")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    check_devices(params)  # before Prefect starts; the flow prepares the data itself
    check_raw_files(params.data.name, params.data.root, download=params.data.download)
    result = pipeline(params, history=args.history)
    print(json.dumps(result["evaluate"], sort_keys=True))
    return result


if __name__ == "__main__":
    command_line(main)
