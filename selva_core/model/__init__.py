"""Network definitions: generator, video encoders and their building blocks."""
