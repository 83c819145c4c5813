"""Network definitions: generator, video encoders, the full Synchformer of the DeSync metric,
and their building blocks."""
