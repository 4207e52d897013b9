"""Training a SHINE hypernetwork: examples of both stages (`data`), the in-context teacher (`distillation`), the
`ShineTrainer` (`trainer`), checks of local data files (`data_files`) and loss plots (`plots`).

`ShineTrainer` and `ShineTrainingArguments` are also importable from the top-level package.
"""
