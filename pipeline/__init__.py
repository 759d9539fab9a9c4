"""The live pipeline: the Faust app, its topics, the worker, the CLI and the embedded broker."""
