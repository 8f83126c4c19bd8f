"""The command line: the parser and one module per command or small family of commands."""
