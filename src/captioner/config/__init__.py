"""Configuration: the params.yaml schema (`params`, also the one list of splits and backbones),
the presets applied on top of it (`presets`) and the one decoding settings type (`decoding`),
which travels from params to the run info, a model folder's decoding.json, the CLI, the service
and the export."""
