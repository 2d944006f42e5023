"""The pipeline layer: one thin Prefect flow per stage over the pfgm library (README, "The pipeline").

`python -m flows <stage> --params params.yaml` runs a stage through the front door (flows/__main__.py).
"""
